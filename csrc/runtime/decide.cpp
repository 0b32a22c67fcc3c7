#include "decide.h"

#include <cmath>
#include <sstream>

#include "error.h"

namespace aminet {

namespace {
std::string repr(double v) {
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}
}  // namespace

double sensitivity_factor(double sensitivity) {
  if (!(sensitivity >= 0.0 && sensitivity <= 1.0))
    throw invalid("sensitivity must be in [0, 1] (0.5 = calibrated threshold), got " + repr(sensitivity));
  return std::pow(4.0, 0.5 - sensitivity);
}

ThresholdSpec parse_threshold(const std::string& text) {
  if (text == "normal") return {ThresholdSpec::NORMAL, 0};
  if (text == "f1") return {ThresholdSpec::F1, 0};
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size()) return {ThresholdSpec::VALUE, v};
  } catch (const std::exception&) {
  }
  throw invalid("threshold must be 'normal', 'f1' or a number, got '" + text + "'");
}

Thresholds resolve_thresholds(const std::optional<Calibration>& calibration, const ThresholdSpec& threshold,
                              std::optional<double> pixel_threshold, double sensitivity) {
  double factor = sensitivity_factor(sensitivity);
  auto need = [&](const std::string& what) -> const Calibration& {
    if (!calibration)
      throw bundle_error("the bundle has no calibration, so " + what + " is unknown: pass threshold=<float> and "
                         "pixel_threshold=<float> (raw score units)");
    return *calibration;
  };
  Thresholds t;
  double image = 0, pixel = 0;
  if (threshold.kind == ThresholdSpec::NORMAL) {
    const Calibration& cal = need("threshold='normal'");
    image = cal.image_threshold;
    pixel = cal.pixel_threshold;
    t.source = "normal";
  } else if (threshold.kind == ThresholdSpec::F1) {
    const Calibration& cal = need("threshold='f1'");
    if (!cal.f1_image_threshold || !cal.f1_pixel_threshold)
      throw bundle_error("the bundle records no F1-optimal thresholds: run `aminet-edge evaluate RUN DATA` on labelled "
                         "images first, or use threshold='normal'");
    image = *cal.f1_image_threshold;
    pixel = *cal.f1_pixel_threshold;
    t.source = "f1";
  } else {
    image = threshold.value;
    t.source = "user";
    pixel = pixel_threshold ? *pixel_threshold : need("the pixel threshold").pixel_threshold;
  }
  if (pixel_threshold) pixel = *pixel_threshold;
  for (auto [name, value] : {std::pair{"image threshold", image}, std::pair{"pixel threshold", pixel}})
    if (!(std::isfinite(value) && value > 0))
      throw invalid(std::string(name) + " must be a finite number > 0, got " + repr(value));
  t.image = image * factor;
  t.pixel = pixel * factor;
  t.sensitivity = sensitivity;
  return t;
}

}  // namespace aminet
