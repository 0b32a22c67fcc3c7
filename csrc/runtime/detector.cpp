#include "detector.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "error.h"
#include "preprocess.h"

namespace aminet {

namespace {
double parse_number(const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw invalid("option '" + key + "' must be a number, got '" + text + "'");
}

int parse_int(const std::string& key, const std::string& text, int minimum) {
  try {
    size_t used = 0;
    long v = std::stol(text, &used);
    if (used == text.size() && v >= minimum && v <= 1 << 20) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  throw invalid("option '" + key + "' must be an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
}
}  // namespace

void Options::set(const std::string& key, const std::string& value) {
  if (key == "threads") {
    backend.threads = parse_int(key, value, 0);
  } else if (key == "precision") {
    backend.precision = value;
  } else if (key == "device") {
    backend.device = value;
  } else if (key == "batch_size") {
    batch_size = parse_int(key, value, 1);
  } else if (key == "threshold") {
    threshold = parse_threshold(value);
  } else if (key == "sensitivity") {
    double s = parse_number(key, value);
    sensitivity_factor(s);  // range checked now, not at create
    sensitivity = s;
  } else if (key == "pixel_threshold") {
    pixel_threshold = parse_number(key, value);
  } else {
    throw invalid("unknown option '" + key + "' (known: batch_size, device, pixel_threshold, precision, sensitivity, "
                  "threads, threshold)");
  }
}

Detector::Detector(const std::string& bundle, const std::string& backend, const Options& options)
    : bundle_(bundle), config_(read_config(bundle)), options_(options) {
  // thresholds first: a bad threshold should not cost a model load (as the Python Detector)
  thresholds_ = resolve_thresholds(config_.calibration, options.threshold, options.pixel_threshold, options.sensitivity);
  backend_ = create_backend(backend, bundle, config_, options.backend);
  nlohmann::json d = {{"library_version", AMINET_VERSION_STRING}, {"bundle", bundle_}, {"backend", backend_->name()},
                      {"device", backend_->device()}, {"precision", backend_->precision()},
                      {"image_size", config_.image_size}, {"grid_size", backend_->grid_size()},
                      {"batch_size", options_.batch_size}, {"image_threshold", thresholds_.image},
                      {"pixel_threshold", thresholds_.pixel}, {"threshold_source", thresholds_.source},
                      {"sensitivity", thresholds_.sensitivity}};
  description_ = d.dump();
}

Thresholds Detector::thresholds_for(const aminet_predict_params& p) const {
  bool new_threshold = p.threshold != AMINET_THRESHOLD_DEFAULT;
  if (!new_threshold && std::isnan(p.sensitivity) && std::isnan(p.pixel_threshold)) return thresholds_;
  ThresholdSpec spec = options_.threshold;
  if (p.threshold == AMINET_THRESHOLD_NORMAL) spec = {ThresholdSpec::NORMAL, 0};
  else if (p.threshold == AMINET_THRESHOLD_F1) spec = {ThresholdSpec::F1, 0};
  else if (p.threshold == AMINET_THRESHOLD_VALUE) spec = {ThresholdSpec::VALUE, p.threshold_value};
  else if (new_threshold) throw invalid("params.threshold is " + std::to_string(p.threshold) + ": expected an aminet_threshold (0-3)");
  // a new threshold drops the detector's pixel_threshold: the pixel threshold then follows the new rule
  std::optional<double> pixel = !std::isnan(p.pixel_threshold) ? std::optional<double>(p.pixel_threshold)
                                : new_threshold ? std::nullopt : options_.pixel_threshold;
  double sensitivity = std::isnan(p.sensitivity) ? options_.sensitivity : p.sensitivity;
  return resolve_thresholds(config_.calibration, spec, pixel, sensitivity);
}

std::unique_ptr<Results> Detector::predict(const aminet_image* images, size_t count, const aminet_predict_params& params) {
  if (count == 0) throw invalid("empty batch: pass at least one image");
  if (images == nullptr) throw invalid("images is NULL (count " + std::to_string(count) + ")");
  if (params.map != AMINET_MAP_INPUT && params.map != AMINET_MAP_MODEL && params.map != AMINET_MAP_NONE)
    throw invalid("params.map is " + std::to_string(params.map) + ": expected AMINET_MAP_INPUT (0), AMINET_MAP_MODEL (1) "
                  "or AMINET_MAP_NONE (2)");
  Thresholds t = thresholds_for(params);
  auto out = std::make_unique<Results>();
  out->items.resize(count);
  out->messages.resize(count);
  out->maps.resize(count);
  out->masks.resize(count);
  out->tokens.resize(count);
  const int s = config_.image_size;
  const size_t plane = static_cast<size_t>(3) * s * s;
  auto source = [&](size_t i) { return count == 1 ? std::string("input") : "input[" + std::to_string(i) + "]"; };
  auto fail = [&](size_t i, aminet_status status, const std::string& problem) {
    aminet_result& r = out->items[i];
    r.status = status;
    out->messages[i] = source(i) + ": " + problem;
    r.score = r.normalized_score = std::nan("");
  };
  for (size_t start = 0; start < count; start += options_.batch_size) {
    size_t end = std::min(count, start + static_cast<size_t>(options_.batch_size));
    std::vector<size_t> good;
    std::vector<float> input;
    for (size_t i = start; i < end; ++i) {
      std::string problem = check_image(images[i]);
      if (!problem.empty()) {
        fail(i, AMINET_ERR_INVALID_ARGUMENT, problem);
        continue;
      }
      input.resize((good.size() + 1) * plane);
      preprocess(images[i], s, config_.mean, config_.std, &input[good.size() * plane]);
      good.push_back(i);
    }
    if (good.empty()) continue;
    ModelOutput m = backend_->run(input.data(), static_cast<int>(good.size()));
    const int side = m.map_side;
    const size_t map_n = static_cast<size_t>(side) * side;
    for (size_t j = 0; j < good.size(); ++j) {
      size_t i = good[j];
      const float* amap = &m.amap[j * map_n];
      bool finite = std::isfinite(m.score[j]);
      for (size_t k = 0; finite && k < map_n; ++k) finite = std::isfinite(amap[k]);
      if (!finite) {
        fail(i, AMINET_ERR_INFERENCE, "the model produced a non-finite score or map for this image");
        continue;
      }
      aminet_result& r = out->items[i];
      r.status = AMINET_OK;
      r.score = static_cast<double>(m.score[j]);
      r.normalized_score = r.score / t.image;
      r.is_anomaly = r.score > t.image;
      if (params.map != AMINET_MAP_NONE) {
        int h = params.map == AMINET_MAP_INPUT ? images[i].height : side;
        int w = params.map == AMINET_MAP_INPUT ? images[i].width : side;
        out->maps[i] = resize_map(amap, side, side, h, w);
        const float pixel = static_cast<float>(t.pixel);
        out->masks[i].resize(out->maps[i].size());
        for (size_t k = 0; k < out->maps[i].size(); ++k) out->masks[i][k] = out->maps[i][k] > pixel;
        r.map_height = h;
        r.map_width = w;
      }
      out->tokens[i].assign(m.mask.begin() + j * m.tokens, m.mask.begin() + (j + 1) * m.tokens);
    }
  }
  const int grid = backend_->grid_size();
  for (size_t i = 0; i < count; ++i) {
    aminet_result& r = out->items[i];
    r.message = out->messages[i].c_str();
    r.image_threshold = t.image;
    r.pixel_threshold = t.pixel;
    if (r.status == AMINET_OK) {
      r.anomaly_map = out->maps[i].empty() ? nullptr : out->maps[i].data();
      r.mask = out->masks[i].empty() ? nullptr : out->masks[i].data();
      r.grid_size = grid;
      r.token_mask = out->tokens[i].data();
    }
  }
  return out;
}

}  // namespace aminet
