// An inference backend of the C runtime: preprocessed images in, the single graph's three outputs out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace aminet {

struct BundleConfig;

// One batch's outputs: amap (n, S, S) float32, score (n,) float32, token mask (n, L) as 0/1.
struct ModelOutput {
  std::vector<float> amap, score;
  std::vector<uint8_t> mask;
  int map_side = 0, tokens = 0;
};

// Backend options from aminet_options (docs/c-api.md, "Options").
struct BackendOptions {
  int threads = 0;                // 0: the backend's choice (all cores)
  std::string precision = "fp32"; // "fp32", "bf16" or "int8"
  std::string device = "CPU";     // OpenVINO device: CPU, GPU, NPU
};

class Backend {
 public:
  virtual ~Backend() = default;
  // images: (n, 3, S, S) float32. Thread-safe: concurrent calls run on separate inference requests.
  virtual ModelOutput run(const float* images, int n) = 0;
  virtual std::string name() const = 0;
  virtual std::string device() const = 0;
  virtual std::string precision() const = 0;
  virtual int grid_size() const = 0;  // side g of the token grid (L = g * g)
};

// The backends this library was built with, comma-separated.
const char* built_backends();

// Backend `name` ("auto", "openvino", "tensorrt") for the bundle; Error(BACKEND_UNAVAILABLE) for an
// unknown name or one not built into this library, Error(BUNDLE) for a graph that fails its checks.
std::unique_ptr<Backend> create_backend(const std::string& name, const std::string& bundle, const BundleConfig& config,
                                        const BackendOptions& options);

}  // namespace aminet
