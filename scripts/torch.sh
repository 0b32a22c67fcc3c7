# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh (not run): make torch importable without ever replacing
# one that is already there (a CUDA build, NVIDIA's Jetson wheel), then write a pip constraints file
# pinning that exact torch so installing the extras cannot swap it. Sets TORCH_CONSTRAINTS.
#   no torch, NVIDIA GPU (nvidia-smi) -> torch==2.13.0 from PyPI (its Linux wheels carry CUDA)
#   no torch, no GPU                  -> torch==2.13.0 CPU build from $AMINET_TORCH_CPU_INDEX
#                                        (default PyTorch's CPU index; PyPI if that is unreachable)
#   no torch, Jetson (L4T)            -> stop: install NVIDIA's wheel for your JetPack first (README)
# AMINET_TEGRA_RELEASE: the L4T release file that marks a Jetson (default /etc/nv_tegra_release).
TORCH_VERSION=2.13.0

if python -c "import torch" 2>/dev/null; then
  echo "using the installed torch $(python -c 'import torch; print(torch.__version__)')"
elif [ -f "${AMINET_TEGRA_RELEASE:-/etc/nv_tegra_release}" ]; then
  echo "error: no torch on this Jetson. PyPI's aarch64 torch has no Jetson GPU support: install NVIDIA's" \
       "wheel for your JetPack (https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform/)," \
       "then run this again" >&2
  exit 1
elif command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q "torch==$TORCH_VERSION"
else
  python -m pip install -q "torch==$TORCH_VERSION" \
    --index-url "${AMINET_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
    || python -m pip install -q "torch==$TORCH_VERSION"
fi
TORCH_CONSTRAINTS="$(mktemp)"
trap 'rm -f "$TORCH_CONSTRAINTS"' EXIT
python -c "import torch; print('torch==' + torch.__version__)" >"$TORCH_CONSTRAINTS"
