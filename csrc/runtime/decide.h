// The decision rule of aminet_edge.runtime.detector (its module docstring; docs/c-api.md, "Decision"):
// image_threshold = base_image * 4 ** (0.5 - sensitivity), pixel_threshold likewise;
// is_anomaly = score > image_threshold; normalized_score = score / image_threshold;
// mask = anomaly_map > (float) pixel_threshold.
#pragma once

#include <optional>
#include <string>

#include "bundle.h"

namespace aminet {

// A Python Detector `threshold` argument: "normal", "f1" or a raw float.
struct ThresholdSpec {
  enum Kind { NORMAL, F1, VALUE } kind = NORMAL;
  double value = 0;
};

struct Thresholds {
  double image = 0, pixel = 0, sensitivity = 0.5;
  std::string source;  // "normal", "f1" or "user"
};

// detector.sensitivity_factor: 4 ** (0.5 - s); Error(INVALID_ARGUMENT) unless s in [0, 1].
double sensitivity_factor(double sensitivity);

// detector.resolve_thresholds; Error(AMINET_ERR_BUNDLE) when the calibration needed is missing,
// Error(INVALID_ARGUMENT) for a bad value.
Thresholds resolve_thresholds(const std::optional<Calibration>& calibration, const ThresholdSpec& threshold,
                              std::optional<double> pixel_threshold, double sensitivity);

// ThresholdSpec of an option string: "normal", "f1" or a number; Error(INVALID_ARGUMENT) otherwise.
ThresholdSpec parse_threshold(const std::string& text);

}  // namespace aminet
