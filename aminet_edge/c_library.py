"""Where this install's C runtime libaminet lies (docs/c-api.md), and loading it with ctypes.

The wheel carries it in the package folder, as `cmake --install build --component runtime --prefix
<package folder>` lays it out: lib/libaminet.so, include/aminet/aminet.h(pp), lib/cmake/aminet/ (the
folder `find_package(aminet)` needs, printed by `aminet-edge info --cmakedir`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CLibrary:
    """libaminet's files in one install: the shared library, the include folder (holding aminet/aminet.h)
    and the CMake package folder (None where it was not installed)."""

    library: Path
    include: Path
    cmake_dir: Path | None


def find(package: Path | None = None) -> CLibrary | None:
    """libaminet in `package` (default: this aminet_edge folder), or None where it carries none."""
    root = package or PACKAGE
    found = sorted((root / "lib").glob("libaminet.so*")) + sorted((root / "lib").glob("aminet.dll"))
    header = root / "include" / "aminet" / "aminet.h"
    if not found or not header.is_file():
        return None
    cmake_dir = root / "lib" / "cmake" / "aminet"
    return CLibrary(found[0], header.parent.parent, cmake_dir if (cmake_dir / "aminetConfig.cmake").is_file() else None)


def load(package: Path | None = None) -> ctypes.CDLL:
    """libaminet loaded with ctypes (aminet_version() etc. with their default ctypes types: set restype).

    The openvino Python package is imported first when it is installed: it loads the libopenvino that
    libaminet needs wherever pip put it, while the library's own RUNPATH ($ORIGIN/../../openvino/libs in the
    wheel) finds only an openvino in the same site-packages. Raises FileNotFoundError where this install
    carries no libaminet and OSError where it cannot be loaded (the loader's message names the library)."""
    found = find(package)
    if found is None:
        raise FileNotFoundError(f"no libaminet in {package or PACKAGE}: this install does not carry the C runtime "
                                "(build the wheel with CMake, OpenVINO, nlohmann_json and OpenSSL present: docs/c-api.md)")
    try:
        import openvino  # noqa: F401 - loads libopenvino for the library's NEEDED entry
    except ImportError:
        pass
    return ctypes.CDLL(str(found.library))
