#!/usr/bin/env bash
# Set up a fresh machine and run the main job on the embedded default data (the README's first command).
# A torch already installed is kept (scripts/torch.sh); one is installed only where none imports.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch.sh
source scripts/torch.sh
python -m pip install -q "setuptools>=64" wheel "pybind11>=2.11"
python -m pip install -q -c "$TORCH_CONSTRAINTS" --no-build-isolation -e ".[train,weights,onnxruntime]"
aminet-edge demo --out "${1:-runs/demo}"
