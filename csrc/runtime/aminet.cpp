// The C ABI (aminet/aminet.h) over the C++ runtime: handles, status codes, per-thread messages.
// No exception crosses this boundary.
#include "aminet/aminet.h"

#include <cmath>
#include <new>
#include <string>

#include "detector.h"
#include "error.h"

struct aminet_options {
  aminet::Options value;
};
struct aminet_detector {
  aminet::Detector value;
};
struct aminet_results {
  std::unique_ptr<aminet::Results> value;
};

namespace {

thread_local std::string last_error;

aminet_status fail(aminet_status status, const std::string& message) {
  last_error = message;
  return status;
}

// Runs `body`, turning any exception into its status and the thread's message.
template <class F>
aminet_status guard(F&& body) {
  try {
    body();
    return AMINET_OK;
  } catch (const aminet::Error& exc) {
    return fail(exc.status, exc.what());
  } catch (const std::bad_alloc&) {
    return fail(AMINET_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& exc) {
    return fail(AMINET_ERR_INTERNAL, std::string("internal error: ") + exc.what());
  } catch (...) {
    return fail(AMINET_ERR_INTERNAL, "internal error: unknown exception");
  }
}

void need(const void* pointer, const char* name) {
  if (pointer == nullptr) throw aminet::invalid(std::string(name) + " is NULL");
}

}  // namespace

extern "C" {

const char* aminet_version(void) { return AMINET_VERSION_STRING; }
int32_t aminet_abi_version(void) { return AMINET_ABI_VERSION; }
const char* aminet_last_error(void) { return last_error.c_str(); }
const char* aminet_backends(void) { return aminet::built_backends(); }

const char* aminet_status_name(aminet_status status) {
  switch (status) {
    case AMINET_OK: return "AMINET_OK";
    case AMINET_ERR_INVALID_ARGUMENT: return "AMINET_ERR_INVALID_ARGUMENT";
    case AMINET_ERR_BUNDLE: return "AMINET_ERR_BUNDLE";
    case AMINET_ERR_BACKEND_UNAVAILABLE: return "AMINET_ERR_BACKEND_UNAVAILABLE";
    case AMINET_ERR_VERSION_MISMATCH: return "AMINET_ERR_VERSION_MISMATCH";
    case AMINET_ERR_INFERENCE: return "AMINET_ERR_INFERENCE";
    case AMINET_ERR_INTERNAL: return "AMINET_ERR_INTERNAL";
  }
  return "AMINET_UNKNOWN_STATUS";
}

aminet_status aminet_options_create(aminet_options** out) {
  return guard([&] {
    need(out, "out");
    *out = nullptr;
    *out = new aminet_options();
  });
}

aminet_status aminet_options_set(aminet_options* options, const char* key, const char* value) {
  return guard([&] {
    need(options, "options");
    need(key, "key");
    need(value, "value");
    options->value.set(key, value);
  });
}

void aminet_options_release(aminet_options* options) { delete options; }

aminet_status aminet_detector_create_abi(int32_t abi_version, const char* bundle_dir, const char* backend,
                                         const aminet_options* options, aminet_detector** out) {
  return guard([&] {
    need(out, "out");
    *out = nullptr;
    if (abi_version > AMINET_ABI_VERSION)
      throw aminet::Error(AMINET_ERR_VERSION_MISMATCH,
                          "aminet.h is ABI version " + std::to_string(abi_version) + " but this libaminet (" +
                          AMINET_VERSION_STRING + ") is ABI version " + std::to_string(AMINET_ABI_VERSION) +
                          ": build against the aminet.h installed with this library, or install a newer libaminet");
    if (abi_version < 1)
      throw aminet::invalid("abi_version is " + std::to_string(abi_version) + ": pass AMINET_ABI_VERSION");
    need(bundle_dir, "bundle_dir");
    need(backend, "backend");
    aminet::Options defaults;
    *out = new aminet_detector{aminet::Detector(bundle_dir, backend, options ? options->value : defaults)};
  });
}

void aminet_detector_release(aminet_detector* detector) { delete detector; }

aminet_status aminet_detector_describe(const aminet_detector* detector, const char** json) {
  return guard([&] {
    need(json, "json");
    *json = nullptr;
    need(detector, "detector");
    *json = detector->value.describe().c_str();
  });
}

void aminet_predict_params_init(aminet_predict_params* params) {
  if (params == nullptr) return;
  params->map = AMINET_MAP_INPUT;
  params->threshold = AMINET_THRESHOLD_DEFAULT;
  params->threshold_value = std::nan("");
  params->sensitivity = std::nan("");
  params->pixel_threshold = std::nan("");
}

aminet_status aminet_predict(aminet_detector* detector, const aminet_image* images, size_t count,
                             const aminet_predict_params* params, aminet_results** out) {
  return guard([&] {
    need(out, "out");
    *out = nullptr;
    need(detector, "detector");
    aminet_predict_params defaults;
    aminet_predict_params_init(&defaults);
    auto results = detector->value.predict(images, count, params ? *params : defaults);
    if (count == 1 && results->items[0].status != AMINET_OK)  // one frame: its problem is the call's
      throw aminet::Error(static_cast<aminet_status>(results->items[0].status), results->messages[0]);
    *out = new aminet_results{std::move(results)};
  });
}

size_t aminet_results_count(const aminet_results* results) { return results ? results->value->items.size() : 0; }

const aminet_result* aminet_results_get(const aminet_results* results, size_t i) {
  if (results == nullptr || i >= results->value->items.size()) return nullptr;
  return &results->value->items[i];
}

void aminet_results_release(aminet_results* results) { delete results; }

}  // extern "C"
