#!/usr/bin/env bash
# Set up a fresh machine and run the main job on the embedded default data (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q "setuptools>=64" wheel "pybind11>=2.11"
python -m pip install -q --no-build-isolation -e ".[train,weights,onnxruntime]"
exec aminet-edge demo --out "${1:-runs/demo}"
