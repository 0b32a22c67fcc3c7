// aminet.hpp - header-only C++17 wrapper of the C ABI (aminet.h): RAII handles and exceptions that carry
// the status and the message. It adds no behaviour; docs/c-api.md describes the calls.
//
//   aminet::Detector det("runs/bottle", "auto", aminet::Options().set("threads", "2"));
//   aminet::Results results = det.predict({aminet::frame(pixels, width, height, 3, AMINET_BGR)});
//   for (const aminet_result& r : results) std::cout << r.score << ' ' << r.is_anomaly << '\n';
#ifndef AMINET_AMINET_HPP
#define AMINET_AMINET_HPP

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "aminet/aminet.h"

namespace aminet {

// A failed call: status() is its aminet_status, what() its message.
class Error : public std::runtime_error {
 public:
  Error(aminet_status status, const std::string& message)
      : std::runtime_error(std::string(aminet_status_name(status)) + ": " + message), status_(status) {}
  aminet_status status() const noexcept { return status_; }

 private:
  aminet_status status_;
};

inline void check(aminet_status status) {
  if (status != AMINET_OK) throw Error(status, aminet_last_error());
}

// An 8-bit frame; stride 0 means rows packed (width * channels bytes).
inline aminet_image frame(const uint8_t* data, int32_t width, int32_t height, int32_t channels,
                          aminet_channel_order order = AMINET_RGB, int64_t stride = 0) {
  return aminet_image{data, width, height, stride ? stride : int64_t(width) * channels, channels, order};
}

class Options {
 public:
  Options() {
    aminet_options* raw = nullptr;
    check(aminet_options_create(&raw));
    handle_.reset(raw);
  }
  Options& set(const std::string& key, const std::string& value) {
    check(aminet_options_set(handle_.get(), key.c_str(), value.c_str()));
    return *this;
  }
  const aminet_options* get() const noexcept { return handle_.get(); }

 private:
  struct Release {
    void operator()(aminet_options* p) const noexcept { aminet_options_release(p); }
  };
  std::unique_ptr<aminet_options, Release> handle_;
};

// The results of one predict call; iterate over aminet_result (valid while this object lives).
class Results {
 public:
  explicit Results(aminet_results* raw) : handle_(raw) {}
  size_t size() const noexcept { return aminet_results_count(handle_.get()); }
  const aminet_result& operator[](size_t i) const { return *aminet_results_get(handle_.get(), i); }
  const aminet_result& at(size_t i) const {
    const aminet_result* r = aminet_results_get(handle_.get(), i);
    if (!r) throw std::out_of_range("aminet::Results::at: " + std::to_string(i) + " >= " + std::to_string(size()));
    return *r;
  }
  const aminet_result* begin() const noexcept { return size() ? aminet_results_get(handle_.get(), 0) : nullptr; }
  const aminet_result* end() const noexcept { return size() ? begin() + size() : nullptr; }

 private:
  struct Release {
    void operator()(aminet_results* p) const noexcept { aminet_results_release(p); }
  };
  std::unique_ptr<aminet_results, Release> handle_;
};

class Detector {
 public:
  explicit Detector(const std::string& bundle_dir, const std::string& backend = "auto",
                    const Options* options = nullptr) {
    aminet_detector* raw = nullptr;
    check(aminet_detector_create(bundle_dir.c_str(), backend.c_str(), options ? options->get() : nullptr, &raw));
    handle_.reset(raw);
  }
  Detector(const std::string& bundle_dir, const std::string& backend, const Options& options)
      : Detector(bundle_dir, backend, &options) {}

  // Frames in one call; a bad frame in a batch is reported in its aminet_result, a single bad frame throws.
  Results predict(const std::vector<aminet_image>& frames, const aminet_predict_params* params = nullptr) {
    aminet_results* raw = nullptr;
    check(aminet_predict(handle_.get(), frames.data(), frames.size(), params, &raw));
    return Results(raw);
  }
  Results predict(const aminet_image& frame, const aminet_predict_params* params = nullptr) {
    return predict(std::vector<aminet_image>{frame}, params);
  }
  // One line of JSON: backend, device, precision, image and grid size, thresholds in force.
  std::string describe() const {
    const char* json = nullptr;
    check(aminet_detector_describe(handle_.get(), &json));
    return json;
  }
  aminet_detector* get() const noexcept { return handle_.get(); }

 private:
  struct Release {
    void operator()(aminet_detector* p) const noexcept { aminet_detector_release(p); }
  };
  std::unique_ptr<aminet_detector, Release> handle_;
};

inline aminet_predict_params default_params() {
  aminet_predict_params params;
  aminet_predict_params_init(&params);
  return params;
}

}  // namespace aminet

#endif  // AMINET_AMINET_HPP
