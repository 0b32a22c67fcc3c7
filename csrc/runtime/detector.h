// The C runtime's Detector: a verified bundle, one backend, the default decision rule; predict as
// aminet_edge.runtime.Detector.predict(list) does (batches by position, bad frames reported per frame).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aminet/aminet.h"
#include "backend.h"
#include "bundle.h"
#include "decide.h"

namespace aminet {

// aminet_options: the backend's options plus the detector's default decision rule and batch size.
struct Options {
  BackendOptions backend;
  int batch_size = 8;
  ThresholdSpec threshold;
  double sensitivity = 0.5;
  std::optional<double> pixel_threshold;

  // Set option `key` from its text; Error(INVALID_ARGUMENT) naming the key and the problem.
  void set(const std::string& key, const std::string& value);
};

// One predict call's outputs; `items` point into the other members.
struct Results {
  std::vector<aminet_result> items;
  std::vector<std::string> messages;
  std::vector<std::vector<float>> maps;
  std::vector<std::vector<uint8_t>> masks, tokens;
};

class Detector {
 public:
  Detector(const std::string& bundle, const std::string& backend, const Options& options);
  // `count` frames; Error for a bad call (NULL pointers, empty batch, bad params, backend failure).
  std::unique_ptr<Results> predict(const aminet_image* images, size_t count, const aminet_predict_params& params);
  const std::string& describe() const { return description_; }

 private:
  Thresholds thresholds_for(const aminet_predict_params& params) const;

  std::string bundle_;
  BundleConfig config_;
  Options options_;
  Thresholds thresholds_;
  std::unique_ptr<Backend> backend_;
  std::string description_;
};

}  // namespace aminet
