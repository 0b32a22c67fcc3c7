// The one exception type of libaminet's implementation: a status code and a message for the caller.
#pragma once

#include <stdexcept>
#include <string>

#include "aminet/aminet.h"

namespace aminet {

struct Error : std::runtime_error {
  Error(aminet_status status, const std::string& message) : std::runtime_error(message), status(status) {}
  aminet_status status;
};

inline Error bundle_error(const std::string& message) { return Error(AMINET_ERR_BUNDLE, message); }
inline Error invalid(const std::string& message) { return Error(AMINET_ERR_INVALID_ARGUMENT, message); }

}  // namespace aminet
