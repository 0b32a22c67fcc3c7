#!/usr/bin/env bash
# Install the aminet-edge inference runtime on an NVIDIA Jetson (JetPack 6 / L4T R36, Orin = sm_87).
# Run it on the Jetson, from a copy of the source tree: bash export/jetson/setup.sh
# Every prerequisite is checked before anything is installed; a missing one stops the script with one
# line saying what to do. Not executed in this project's CI (no Jetson there): see docs/deployment.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_SRC=$(cd "$SCRIPT_DIR/../.." && pwd)
PROG=$(basename "$0")

usage() {
  cat <<EOF
Usage: $PROG [options]

Install the aminet-edge runtime on a Jetson with JetPack 6 (L4T R36, CUDA 12, TensorRT 10):
  1. check: Jetson + L4T version, CUDA (nvcc), TensorRT's Python bindings (JetPack ships them),
     Python >= 3.10 with pip and headers, a C++ compiler and CMake >= 3.18;
  2. pip-install aminet-edge from SRC WITHOUT the training extras (no torch), with pycuda and numpy;
  3. build the CUDA kernels libaminet_cuda.so for sm_87 with CMake against JetPack's CUDA and put
     them next to the installed package;
  4. print 'aminet-edge info'.
Then build the TensorRT engine on this device: export/jetson/build_engine.sh BUNDLE

Options:
  --src DIR       aminet-edge source tree (default: $DEFAULT_SRC)
  --python PY     Python interpreter to install for (default: python3)
  --venv DIR      create (or reuse) a virtual environment at DIR with --system-site-packages, so
                  JetPack's tensorrt bindings stay visible, and install into it
  --arch LIST     CMAKE_CUDA_ARCHITECTURES (default: 87, Jetson Orin)
  --cuda DIR      CUDA toolkit (default: \$CUDA_HOME, else /usr/local/cuda)
  --numpy SPEC    numpy requirement (default: 'numpy>=1.24,<2': JetPack 6's binary Python
                  modules are built against NumPy 1.x)
  --no-pycuda     do not install pycuda (the TensorRT backend then needs cuda-python)
  --check         only run the checks; install nothing
  -h, --help      show this help and exit

Environment (for containers and tests):
  AMINET_TEGRA_RELEASE  the L4T release file to read (default: /etc/nv_tegra_release)
  AMINET_MACHINE        the CPU architecture to assume (default: uname -m)
EOF
}

# shellcheck source=SCRIPTDIR/../common.sh
source "$SCRIPT_DIR/../common.sh"

SRC=$DEFAULT_SRC
PY=python3
VENV=""
ARCH=87
CUDA_DIR=${CUDA_HOME:-/usr/local/cuda}
NUMPY_SPEC='numpy>=1.24,<2'
PYCUDA=1
CHECK_ONLY=0

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --src) SRC=${2:?--src needs a directory}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
    --arch) ARCH=${2:?--arch needs a list, e.g. 87}; shift 2 ;;
    --cuda) CUDA_DIR=${2:?--cuda needs a directory}; shift 2 ;;
    --numpy) NUMPY_SPEC=${2:?--numpy needs a requirement}; shift 2 ;;
    --no-pycuda) PYCUDA=0; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    *) echo "$PROG: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# ---- checks (nothing is changed until all of them pass) -------------------------------------------

check_jetson() {
  local release=${AMINET_TEGRA_RELEASE:-/etc/nv_tegra_release}
  [[ -f $release ]] || die "not a Jetson: $release not found. This script installs on NVIDIA Jetson" \
    "with JetPack 6; on a PC use 'pip install aminet-edge[onnxruntime]' (CPU) or export/rtx/ (RTX GPUs)"
  local line
  line=$(head -n 1 "$release")
  # e.g. "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
  local pattern='R([0-9]+) \(release\), REVISION: ([0-9.]+)'
  [[ $line =~ $pattern ]] || die "cannot read the L4T version from $release: '$line'"
  local major=${BASH_REMATCH[1]} revision=${BASH_REMATCH[2]}
  if ((major < 36)); then
    die "L4T R$major.$revision is JetPack 5 or older; aminet-edge needs JetPack 6 (L4T R36," \
      "TensorRT 10): flash JetPack 6 first"
  fi
  if ((major > 36)); then
    info "warning: L4T R$major.$revision is newer than JetPack 6 (R36), untested: pass --arch for its GPU"
  fi
  local machine
  machine=${AMINET_MACHINE:-$(uname -m)}
  [[ $machine == aarch64 ]] || die "$release says L4T R$major, but this machine is $machine, not aarch64"
  info "Jetson: L4T R$major.$revision ($machine)"
}

check_cuda() {
  NVCC=$CUDA_DIR/bin/nvcc
  [[ -x $NVCC ]] || die "CUDA not found: $NVCC does not exist. JetPack's CUDA: 'sudo apt install" \
    "nvidia-jetpack' (or cuda-toolkit-12-6), or pass --cuda DIR"
  local version
  version=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  [[ -n $version ]] || die "cannot read the CUDA version from '$NVCC --version'"
  ((${version%%.*} >= 12)) || die "CUDA $version found at $CUDA_DIR; JetPack 6 ships CUDA 12: use --cuda DIR"
  info "CUDA $version: $NVCC"
}

check_tools() {
  command -v cmake >/dev/null || die "cmake not found: sudo apt install cmake"
  local version
  version=$(cmake --version | sed -n 's/^cmake version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  read -r cmake_major cmake_minor <<<"$version"
  if ((cmake_major < 3 || (cmake_major == 3 && cmake_minor < 18))); then
    die "CMake >= 3.18 needed, found $cmake_major.$cmake_minor: 'python3 -m pip install cmake'"
  fi
  command -v g++ >/dev/null || die "no C++ compiler (g++): sudo apt install build-essential"
  [[ -f $SRC/setup.py && -f $SRC/CMakeLists.txt && -d $SRC/aminet_edge ]] ||
    die "$SRC is not an aminet-edge source tree (no setup.py, CMakeLists.txt, aminet_edge/): pass --src DIR"
  SRC=$(cd "$SRC" && pwd)  # pip needs "/abs/path[extra]"
}

check_python() {
  command -v "$PY" >/dev/null || die "Python interpreter '$PY' not found: sudo apt install python3"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "Python >= 3.10 needed, $PY is $("$PY" -V 2>&1)"
  "$PY" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PY: sudo apt install python3-pip"
  "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
    die "Python headers missing (needed to build the C++ kernels and pycuda): sudo apt install python3-dev"
  local trt
  trt=$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null) ||
    die "TensorRT's Python bindings are not importable by $PY. JetPack ships them: 'sudo apt install" \
      "nvidia-jetpack' (or python3-libnvinfer); a venv must be made with --system-site-packages"
  ((${trt%%.*} >= 10)) || die "TensorRT $trt found; aminet-edge needs TensorRT 10.x (JetPack 6)"
  info "TensorRT $trt, $("$PY" -V 2>&1)"
  if "$PY" -c 'import numpy' 2>/dev/null; then
    info "numpy $("$PY" -c 'import numpy; print(numpy.__version__)') present; pip will enforce '$NUMPY_SPEC'"
  else
    info "numpy missing: pip will install '$NUMPY_SPEC'"
  fi
  if ((PYCUDA)); then
    if "$PY" -c 'import pycuda' 2>/dev/null; then info "pycuda present"; else info "pycuda missing: pip will build it"; fi
  fi
}

check_jetson
check_cuda
check_tools
if [[ -n $VENV && $CHECK_ONLY -eq 0 ]]; then
  check_python  # the base interpreter must see TensorRT for the venv to see it
  if [[ ! -x $VENV/bin/python ]]; then
    info "creating virtual environment $VENV (--system-site-packages)"
    "$PY" -m venv --system-site-packages "$VENV" || die "cannot create $VENV: sudo apt install python3-venv"
  fi
  PY=$VENV/bin/python
fi
check_python
if ((CHECK_ONLY)); then
  info "all checks passed (--check: nothing installed)"
  exit 0
fi

# ---- install ---------------------------------------------------------------------------------------

export CUDA_HOME=$CUDA_DIR
export PATH=$CUDA_DIR/bin:$PATH  # pycuda's build finds nvcc and the CUDA headers through these

info "installing build tools and $NUMPY_SPEC"
"$PY" -m pip install --upgrade "setuptools>=64" wheel "pybind11>=2.11" "$NUMPY_SPEC"
extras=""
((PYCUDA)) && extras="[jetson]"
info "installing aminet-edge$extras from $SRC (runtime only: no torch)"
# the C++ CPU kernels must build (the split onnxruntime fallback needs them): fail rather than skip
AMINET_REQUIRE_EXT=1 "$PY" -m pip install --no-build-isolation "$SRC$extras" "$NUMPY_SPEC"

# the installed package's parent folder (run outside SRC, so the source tree is not imported instead)
SITE=$(cd / && "$PY" -c 'import aminet_edge, os; print(os.path.dirname(os.path.dirname(aminet_edge.__file__)))')
BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aminet-cuda-build.XXXXXX")
trap 'rm -rf "$BUILD_DIR"' EXIT
info "building libaminet_cuda.so for sm_$ARCH with $NVCC"
cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DAMINET_BUILD_CUDA=ON -DAMINET_COPY_INPLACE=OFF
cmake --build "$BUILD_DIR" -j "$(nproc)"
[[ -f $BUILD_DIR/libaminet_cuda.so ]] || die "CMake did not build libaminet_cuda.so (is nvcc $NVCC usable?)"
cmake --install "$BUILD_DIR" --prefix "$SITE"

info "checking the installation"
(cd / && "$PY" - <<'EOF'
import sys

from aminet_edge.ops import cuda

reason = cuda.unavailable_reason()
print("CUDA kernels:", reason or "available")
if reason and "not found" in reason:
    sys.exit("libaminet_cuda.so was not installed next to the package")
assert "torch" not in sys.modules, "the runtime imported torch"
EOF
)
AMINET=$(dirname "$PY")/aminet-edge
[[ -x $AMINET ]] || AMINET=aminet-edge
"$AMINET" info || info "warning: 'aminet-edge info' failed"
info "done. Next: $SCRIPT_DIR/build_engine.sh BUNDLE (on this device), then Detector.load(BUNDLE, device='cuda')"
