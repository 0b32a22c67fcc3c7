#!/usr/bin/env bash
# Build a bundle's TensorRT-RTX engine ahead of time, on any machine (a CPU build server: no GPU needed),
# for the GPU generations you ship to; the engine travels inside the bundle to the RTX PCs.
# The engine build runs in this project's CI; loading and running the engine needs an RTX GPU and was
# never done there (see docs/deployment.md).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=$(basename "$0")

usage() {
  cat <<EOF
Usage: $PROG BUNDLE [options] [-- BUILD_ENGINE_ARGS...]

Build the TensorRT-RTX engine of BUNDLE ahead of time, for the listed GPU compute capabilities,
with 'aminet-edge build-engine BUNDLE --target rtx'. Runs without a GPU. The engine is written into
the bundle; copy the whole bundle to the PCs, where 'pip install aminet-edge[rtx]' and an NVIDIA
driver are all that is needed (TensorRT-RTX specialises the kernels for the GPU on first use).

Options:
  --cc LIST         compute capabilities, comma-separated, e.g. 86,89,120 (RTX 30xx / A-series Ampere,
                    RTX 40xx Ada, RTX 50xx Blackwell); default: aminet-edge's list, shown by
                    'aminet-edge build-engine --help' (--arch). 75 (Turing) is not supported
  --precision P     fp16 (default) or fp32
  --batch MIN,OPT,MAX
                    batch sizes of the engine's optimisation profile (default: 1,1,8)
  --python PY       Python with aminet-edge and tensorrt_rtx (default: python3)
  -h, --help        show this help and exit
Arguments after -- go to 'aminet-edge build-engine' unchanged (see 'aminet-edge build-engine --help').

Prerequisites: pip install 'aminet-edge[rtx]' (TensorRT-RTX from PyPI), and a bundle exported with
'aminet-edge export RUN'.
EOF
}

# shellcheck source=SCRIPTDIR/../common.sh
source "$SCRIPT_DIR/../common.sh"

BUNDLE=""
CC=""
CC_GIVEN=0
PRECISION=fp16
BATCH=1,1,8
PY=python3
EXTRA=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --cc) CC=${2?--cc needs a list, e.g. 86,89,120}; CC_GIVEN=1; shift 2 ;;
    --precision) PRECISION=${2:?--precision needs fp16 or fp32}; shift 2 ;;
    --batch) BATCH=${2:?--batch needs MIN,OPT,MAX}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) usage_error "unknown option: $1" ;;
    *)
      [[ -z $BUNDLE ]] || usage_error "one BUNDLE only, got '$BUNDLE' and '$1'"
      BUNDLE=$1; shift ;;
  esac
done

[[ -n $BUNDLE ]] || { usage >&2; exit 2; }
ARCH_ARGS=()
if ((CC_GIVEN)); then
  [[ $CC =~ ^[0-9]+(,[0-9]+)*$ ]] || usage_error "--cc must be compute capabilities like 86,89,120, got '$CC'"
  IFS=, read -r -a CCS <<<"$CC"
  for cc in "${CCS[@]}"; do ARCH_ARGS+=(--arch "$cc"); done
fi
check_precision_and_batch "$PRECISION" "$BATCH"
IFS=, read -r -a BATCH_ARGS <<<"$BATCH"  # build-engine takes --batch MIN OPT MAX

# ---- checks ------------------------------------------------------------------------------------------

BUNDLE=$(bundle_dir "$BUNDLE")
command -v "$PY" >/dev/null || die "Python interpreter '$PY' not found"
# the graph the engine is built from; build-engine exports it on demand, which needs torch (the train extra)
GRAPH=$(graph_name "$PRECISION")
if [[ ! -f $BUNDLE/$GRAPH ]]; then
  (cd / && "$PY" -c 'import torch' 2>/dev/null) ||
    die "no ONNX graph $GRAPH in $BUNDLE, and no torch here to export it: run 'aminet-edge export" \
      "$BUNDLE$([[ $PRECISION == fp32 ]] || echo " --precision $PRECISION")' where the bundle was trained, or" \
      "pip install 'aminet-edge[train]'"
  info "$GRAPH is not in the bundle yet: build-engine exports it first"
fi
TRT=$("$PY" -c 'import tensorrt_rtx; print(tensorrt_rtx.__version__)' 2>/dev/null) ||
  die "tensorrt_rtx is not importable by $PY: pip install 'aminet-edge[rtx]' (TensorRT-RTX from PyPI)"
(cd / && "$PY" -c 'import aminet_edge' 2>/dev/null) || die "aminet-edge is not installed for $PY: pip install 'aminet-edge[rtx]'"
info "TensorRT-RTX $TRT; building a $PRECISION engine (batch $BATCH) for compute capabilities" \
  "${CC:-(the default list)}"

# ---- build -------------------------------------------------------------------------------------------

cd /  # not a source tree: `-m aminet_edge` must be the installed package
"$PY" -m aminet_edge build-engine "$BUNDLE" --target rtx --precision "$PRECISION" --batch "${BATCH_ARGS[@]}" \
  ${ARCH_ARGS[@]+"${ARCH_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
info "done: copy $BUNDLE to the RTX PCs; there Detector.load(BUNDLE, device='cuda') uses the engine"
