// The bundle as the C runtime reads it: config.json's fields the runtime uses, checked with the rules
// of aminet_edge/bundle.py (docs/c-api.md, "Bundle"), and the one graph it runs, read into memory and
// verified against its recorded size and sha256 (the bytes checked are the bytes compiled); with the
// nearest-normal guide also the guide's bank, read from the verified weights file (the graph's input
// "guide_bank": aminet_edge/export/graph_io.py).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

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
  std::optional<std::string> guide_bank;      // graphs of guided bundles: "weights" (bundle.py GUIDE_BANK_RECORD)
};

struct BundleConfig {
  int schema_version = 0;
  int image_size = 0;                        // S: the model's square input side, px
  std::string mask;                          // model.mask: "adaptive" or "nearest_normal"
  int in_channels = 0;                       // C: the backbone's feature channels
  int guide_columns = 0;                     // the guide's bank columns: model.guide_dims when in (0, C), else C
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

// The nearest-normal guide's bank: "guide.bank" (M, C) float16 of the weights file (recorded, inside the
// bundle, of the recorded size and sha256), as float32 row-major, C = guide_columns. Throws Error(AMINET_ERR_BUNDLE).
struct GuideBank {
  std::vector<float> values;  // (rows, cols) float32
  int64_t rows = 0, cols = 0;
};
GuideBank read_guide_bank(const std::string& bundle, const BundleConfig& config);

// Lower-case hex sha256 of `bytes` (OpenSSL EVP).
std::string sha256_hex(const std::string& bytes);

}  // namespace aminet
