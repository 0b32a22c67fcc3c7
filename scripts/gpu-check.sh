#!/usr/bin/env bash
# The GPU proof run (bench/gpu_check.py): build the C++/CUDA code with what the machine has, run
# `pytest -m gpu`, the kernel, runtime and training benchmarks on CUDA, a short bottle training with
# --resume and the fp16/bf16 accuracy check; one report in $OUT/gpu_check (else bench/out/gpu_check).
# Installs nothing. Needs gpu_data/ beside the tree (made on the CPU machine by
#   scripts/gpu-check.sh --prepare      # = python bench/gpu_check.py --prepare
# and carried with the checkout: carry ["gpu_data"]). Extra arguments go to bench/gpu_check.py
# (--dry-run, --budget SECONDS, --only step,step, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
# the interpreter that has torch ($PYTHON if set, else python, else python3)
for candidate in "${PYTHON:-}" python python3; do
  if [[ -n $candidate ]] && command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
    exec "$candidate" bench/gpu_check.py "$@"
  fi
done
echo "error: no python with torch found (tried \$PYTHON, python, python3); set PYTHON=/path/to/python" >&2
exit 1
