// The "openvino" backend: the bundle's verified single graph (model.onnx, or model_int8_static.onnx for
// precision int8) compiled by OpenVINO with the settings of aminet_edge/runtime/backends/openvino_backend.py
// (PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT f32 or bf16, INFERENCE_NUM_THREADS), one inference
// request per concurrent call (OpenVINO's recommendation for sharing a compiled model between threads).
// With the nearest-normal guide the graph's second input "guide_bank" (M, C) float32 is the guide's bank,
// read once from the verified weights file (bundle.h read_guide_bank) into one tensor that every request
// is given when it is created: no call copies it.
#include <algorithm>
#include <cmath>
#include <mutex>

#include <openvino/openvino.hpp>

#include "backend.h"
#include "bundle.h"
#include "error.h"

namespace aminet {
namespace {

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& bundle, const BundleConfig& config, const BackendOptions& options)
      : precision_(options.precision), size_(config.image_size) {
    if (precision_ != "fp32" && precision_ != "bf16" && precision_ != "int8")
      throw invalid("openvino precision must be one of fp32, bf16, int8, got '" + precision_ + "'");
    device_ = options.device;
    std::transform(device_.begin(), device_.end(), device_.begin(), ::toupper);
    try {
      auto devices = core_.get_available_devices();
      if (std::find(devices.begin(), devices.end(), device_) == devices.end()) {
        std::string list;
        for (const auto& d : devices) list += (list.empty() ? "" : ", ") + d;
        throw Error(AMINET_ERR_BACKEND_UNAVAILABLE, "OpenVINO device '" + device_ + "' is not present here (available: " +
                    list + ")");
      }
      if (precision_ == "bf16") {
        auto caps = core_.get_property(device_, ov::device::capabilities);
        if (std::find(caps.begin(), caps.end(), "BF16") == caps.end())
          throw Error(AMINET_ERR_BACKEND_UNAVAILABLE, "this " + device_ + " has no native bf16 (OpenVINO "
                      "OPTIMIZATION_CAPABILITIES lacks BF16: needs AVX512_BF16 or AMX); use precision fp32");
      }
    } catch (const ov::Exception& exc) {
      throw Error(AMINET_ERR_BACKEND_UNAVAILABLE, std::string("OpenVINO cannot query its devices: ") + exc.what());
    }
    std::string graph = read_graph(bundle, config, precision_ == "int8" ? "int8_static" : "fp32");  // verified bytes
    path_ = bundle + "/" + (precision_ == "int8" ? "model_int8_static.onnx" : "model.onnx");
    std::shared_ptr<ov::Model> model;
    try {
      model = core_.read_model(graph, ov::Tensor());
    } catch (const ov::Exception& exc) {
      throw bundle_error(path_ + ": OpenVINO cannot read this graph (" + exc.what() + ")");
    }
    ov::AnyMap settings{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                        ov::hint::inference_precision(precision_ == "bf16" ? ov::element::bf16 : ov::element::f32)};
    if (options.threads > 0) settings.emplace(ov::inference_num_threads(options.threads));
    try {
      compiled_ = core_.compile_model(model, device_, settings);
    } catch (const ov::Exception& exc) {
      throw bundle_error(path_ + ": OpenVINO cannot compile this graph (" + exc.what() + ")");
    }
    if (config.mask == "nearest_normal") {
      GuideBank bank = read_guide_bank(bundle, config);
      bank_ = ov::Tensor(ov::element::f32, ov::Shape{static_cast<size_t>(bank.rows), static_cast<size_t>(bank.cols)});
      std::copy(bank.values.begin(), bank.values.end(), bank_.data<float>());
    }
    check_io();
  }

  ModelOutput run(const float* images, int n) override {
    ov::InferRequest request = acquire();
    ModelOutput out;
    try {
      ov::Tensor input(ov::element::f32, ov::Shape{static_cast<size_t>(n), 3, static_cast<size_t>(size_),
                                                   static_cast<size_t>(size_)}, const_cast<float*>(images));
      request.set_tensor("images", input);
      request.infer();
      ov::Tensor amap = request.get_tensor("amap"), score = request.get_tensor("score"), mask = request.get_tensor("mask");
      out.map_side = static_cast<int>(amap.get_shape().at(1));
      out.tokens = static_cast<int>(mask.get_shape().at(1));
      out.amap.assign(amap.data<const float>(), amap.data<const float>() + amap.get_size());
      out.score.assign(score.data<const float>(), score.data<const float>() + score.get_size());
      const char* m = static_cast<const char*>(mask.data());
      out.mask.resize(mask.get_size());
      for (size_t i = 0; i < out.mask.size(); ++i) out.mask[i] = m[i] ? 1 : 0;
    } catch (const ov::Exception& exc) {
      release(request);
      throw Error(AMINET_ERR_INFERENCE, path_ + ": OpenVINO inference failed (" + exc.what() + ")");
    }
    release(request);
    return out;
  }

  std::string name() const override { return "openvino"; }
  std::string device() const override { return device_; }
  std::string precision() const override { return precision_; }
  int grid_size() const override { return grid_; }

 private:
  void check_io() {
    std::vector<std::string> missing;
    auto has = [](const std::vector<ov::Output<const ov::Node>>& ports, const std::string& name) {
      for (const auto& p : ports)
        if (p.get_names().count(name)) return true;
      return false;
    };
    if (!has(compiled_.inputs(), "images")) missing.push_back("images");
    if (bank_ && !has(compiled_.inputs(), "guide_bank")) missing.push_back("guide_bank");
    for (const char* name : {"amap", "score", "mask"})
      if (!has(compiled_.outputs(), name)) missing.push_back(name);
    if (!missing.empty()) {
      std::string list;
      for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
      throw bundle_error(path_ + ": graph lacks tensor(s) " + list + "; re-export the bundle with this aminet-edge");
    }
    const auto& tokens = compiled_.output("mask").get_partial_shape();
    if (tokens.rank().is_dynamic() || tokens.rank().get_length() != 2 || tokens[1].is_dynamic())
      throw bundle_error(path_ + ": output 'mask' is not (batch, L); re-export the bundle with this aminet-edge");
    int64_t l = tokens[1].get_length();
    grid_ = static_cast<int>(std::lround(std::sqrt(static_cast<double>(l))));
    if (static_cast<int64_t>(grid_) * grid_ != l)
      throw bundle_error(path_ + ": output 'mask' has " + std::to_string(l) + " tokens, not a square grid");
  }

  ov::InferRequest acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        ov::InferRequest r = idle_.back();
        idle_.pop_back();
        return r;
      }
    }
    try {
      ov::InferRequest request = compiled_.create_infer_request();
      if (bank_) request.set_tensor("guide_bank", bank_);  // shared, read-only: set once per request
      return request;
    } catch (const ov::Exception& exc) {
      throw Error(AMINET_ERR_INFERENCE, std::string("OpenVINO could not create an inference request: ") + exc.what());
    }
  }

  void release(ov::InferRequest request) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(request));
  }

  ov::Core core_;
  ov::CompiledModel compiled_;
  ov::Tensor bank_;  // the guide's bank (M, C) float32; empty without the guide
  std::string precision_, device_, path_;
  int size_ = 0, grid_ = 0;
  std::mutex mutex_;
  std::vector<ov::InferRequest> idle_;  // requests not running now; at most one per concurrent caller
};

}  // namespace

const char* built_backends() { return "openvino"; }

std::unique_ptr<Backend> create_backend(const std::string& name, const std::string& bundle, const BundleConfig& config,
                                        const BackendOptions& options) {
  if (name == "auto" || name == "openvino") return std::make_unique<OpenVinoBackend>(bundle, config, options);
  if (name == "tensorrt")
    throw Error(AMINET_ERR_BACKEND_UNAVAILABLE, "backend 'tensorrt' is not built into this library (built: " +
                std::string(built_backends()) + "); use the Python runtime's tensorrt backend, or 'openvino'");
  throw Error(AMINET_ERR_BACKEND_UNAVAILABLE, "unknown backend '" + name + "'; choose auto, openvino or tensorrt "
              "(built into this library: " + std::string(built_backends()) + ")");
}

}  // namespace aminet
