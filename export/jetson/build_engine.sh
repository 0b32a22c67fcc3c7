#!/usr/bin/env bash
# Build the TensorRT engine of a bundle on the Jetson that will run it (engines are tied to the GPU and
# the TensorRT version, so they are built on the device). Run export/jetson/setup.sh once before.
# Not executed in this project's CI (no Jetson there): see docs/deployment.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=$(basename "$0")

usage() {
  cat <<EOF
Usage: $PROG BUNDLE [options] [-- BUILD_ENGINE_ARGS...]

Build the TensorRT engine for this Jetson from BUNDLE's exported ONNX graph, with
'aminet-edge build-engine BUNDLE --target jetson', into the bundle; then load it and run one image
on the GPU to check it. The bundle must have been exported on the training machine first
('aminet-edge export RUN'), and this device set up with $SCRIPT_DIR/setup.sh.

Options:
  --precision P     fp16 (default) or fp32
  --batch MIN,OPT,MAX
                    batch sizes of the engine's optimisation profile (default: 1,1,8)
  --python PY       Python with aminet-edge installed (default: python3)
  --no-verify       do not load and run the engine after building it
  -h, --help        show this help and exit
Arguments after -- go to 'aminet-edge build-engine' unchanged (see 'aminet-edge build-engine --help'),
e.g. '-- --split' for the two split-graph engines that run with the CUDA kernels setup.sh built, or
'-- --workspace-mb 2048' to cap the builder's memory.

Environment (for containers and tests):
  AMINET_TEGRA_RELEASE  the L4T release file to read (default: /etc/nv_tegra_release)
  AMINET_MACHINE        the CPU architecture to assume (default: uname -m)
EOF
}

# shellcheck source=SCRIPTDIR/../common.sh
source "$SCRIPT_DIR/../common.sh"

BUNDLE=""
PRECISION=fp16
BATCH=1,1,8
PY=python3
VERIFY=1
EXTRA=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --precision) PRECISION=${2:?--precision needs fp16 or fp32}; shift 2 ;;
    --batch) BATCH=${2:?--batch needs MIN,OPT,MAX}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --no-verify) VERIFY=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) usage_error "unknown option: $1" ;;
    *)
      [[ -z $BUNDLE ]] || usage_error "one BUNDLE only, got '$BUNDLE' and '$1'"
      BUNDLE=$1; shift ;;
  esac
done

[[ -n $BUNDLE ]] || { usage >&2; exit 2; }
check_precision_and_batch "$PRECISION" "$BATCH"
IFS=, read -r -a BATCH_ARGS <<<"$BATCH"  # build-engine takes --batch MIN OPT MAX

# ---- checks ------------------------------------------------------------------------------------------

BUNDLE=$(bundle_dir "$BUNDLE")
# the graph the engine is built from; exporting needs torch, which the device does not have, so it must
# come with the bundle
GRAPH=$(graph_name "$PRECISION")
EXPORT_ARGS=""
[[ $PRECISION == fp32 ]] || EXPORT_ARGS=" --precision $PRECISION"
[[ -f $BUNDLE/$GRAPH ]] || die "no ONNX graph $GRAPH in $BUNDLE: export it on the training machine" \
  "('aminet-edge export RUN$EXPORT_ARGS'), then copy the bundle here again"

RELEASE=${AMINET_TEGRA_RELEASE:-/etc/nv_tegra_release}
[[ -f $RELEASE ]] || die "not a Jetson ($RELEASE not found). For RTX PCs build the engine ahead of time" \
  "with export/rtx/build_engine_aot.sh; for other NVIDIA GPUs run 'aminet-edge build-engine BUNDLE --target auto'" \
  "on the machine that will run it"
MACHINE=${AMINET_MACHINE:-$(uname -m)}
[[ $MACHINE == aarch64 ]] || die "$RELEASE exists but this machine is $MACHINE, not aarch64"

command -v "$PY" >/dev/null || die "Python interpreter '$PY' not found"
TRT=$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null) ||
  die "TensorRT's Python bindings are not importable by $PY: run $SCRIPT_DIR/setup.sh first (JetPack ships them)"
(cd / && "$PY" -c 'import aminet_edge' 2>/dev/null) ||
  die "aminet-edge is not installed for $PY: run $SCRIPT_DIR/setup.sh first"
info "TensorRT $TRT; building a $PRECISION engine (batch $BATCH) for $BUNDLE"

# ---- build -------------------------------------------------------------------------------------------

cd /  # not a source tree: `-m aminet_edge` must be the installed package, next to its CUDA kernels
ENGINE=$("$PY" -m aminet_edge build-engine "$BUNDLE" --target jetson --precision "$PRECISION" \
  --batch "${BATCH_ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} | tail -n 1)
info "engine: $ENGINE"

if ((VERIFY)); then
  info "checking that the engine loads and runs on the GPU"
  SPLIT=0
  for arg in ${EXTRA[@]+"${EXTRA[@]}"}; do [[ $arg == --split ]] && SPLIT=1; done
  "$PY" - "$BUNDLE" "$ENGINE" "$PRECISION" "$SPLIT" <<'EOF'
import sys

import numpy as np

from aminet_edge import Detector

bundle, engine, precision, split = sys.argv[1:]
# the split pair is found by precision; a single engine is named exactly
choice = {"precision": precision} if split == "1" else {"engine": engine}
detector = Detector.load(bundle, backend="tensorrt", device="cuda", **choice)
side = detector.image_size
result = detector.predict(np.full((side, side, 3), 128, np.uint8))
print(f"engine OK: {detector.backend_description}; grey test image: score {result.score:.6g}, "
      f"backend {result.timing.backend_ms:.1f} ms")
EOF
fi
info "done: Detector.load('$BUNDLE', device='cuda') now uses the engine"
