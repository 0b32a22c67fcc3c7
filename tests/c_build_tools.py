"""What building libaminet (the C runtime) needs, shared by the tests that build it (test_c_api.py with
CMake, test_deploy_scripts.py through the wheel)."""

from __future__ import annotations

import shutil
from pathlib import Path


def missing_c_runtime_tools() -> str | None:
    """Why libaminet cannot be built here, or None: CMake, C and C++ compilers, the openvino package's
    OpenVINOConfig.cmake, nlohmann/json's and OpenSSL's headers."""
    if shutil.which("cmake") is None or shutil.which("c++") is None or shutil.which("cc") is None:
        return "cmake and a C/C++ compiler are needed to build libaminet"
    try:
        import openvino
    except ImportError:
        return "openvino is not installed (its wheel ships OpenVINOConfig.cmake)"
    if not (Path(openvino.__file__).parent / "cmake" / "OpenVINOConfig.cmake").is_file():
        return "this openvino install ships no OpenVINOConfig.cmake"
    for header, package in (("nlohmann/json.hpp", "nlohmann-json3-dev"), ("openssl/evp.h", "libssl-dev")):
        if not any((Path(d) / header).is_file() for d in ("/usr/include", "/usr/local/include")):
            return f"{header} not found: install {package} (scripts/test.sh does on Debian)"
    return None
