// The bundle as the C runtime reads it: config.json's fields the runtime uses, checked with the rules
// of aminet_edge/bundle.py (docs/c-api.md, "Bundle"), and the one graph it runs, read into memory and
// verified against its recorded size and sha256 (the bytes checked are the bytes compiled).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace aminet {

struct Calibration {
  double image_threshold = 0, pixel_threshold = 0;
  std::optional<double> f1_image_threshold, f1_pixel_threshold;
};

// One file's record in config.json "artifacts" (checked at read: path inside, sha256 hex, bytes).
struct Record {
  std::string path, sha256;
  int64_t bytes = 0;
  std::optional<std::string> weights_sha256;  // graphs and engines: of the weights they were made from
};

struct BundleConfig {
  int schema_version = 0;
  int image_size = 0;                        // S: the model's square input side, px
  std::string mask;                          // model.mask: "adaptive" or "nearest_normal"
  std::array<float, 3> mean{}, std{};        // preprocess, RGB, as float32 (the Python runtime's dtype)
  std::optional<Calibration> calibration;
  std::optional<Record> weights;             // artifacts.weights
  std::map<std::string, Record> graphs;      // artifacts.onnx, by key ("model", "model_int8_static", ...)
};

// config.json of `bundle`, validated; throws Error(AMINET_ERR_BUNDLE) naming the file and the field.
BundleConfig read_config(const std::string& bundle);

// The bytes of graph "model" at `precision` ("fp32" or "int8_static"): recorded, inside the bundle, made
// from the current weights, of the recorded size and sha256. Throws Error(AMINET_ERR_BUNDLE).
std::string read_graph(const std::string& bundle, const BundleConfig& config, const std::string& precision);

// Lower-case hex sha256 of `bytes` (OpenSSL EVP).
std::string sha256_hex(const std::string& bytes);

}  // namespace aminet
