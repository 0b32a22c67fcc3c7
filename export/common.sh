# shellcheck shell=bash
# Sourced by the scripts of this kit (after they set PROG): their messages, and the checks of the
# --precision, --batch and BUNDLE arguments that both engine-build scripts take.

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $* (see --help)" >&2; exit 2; }
info() { echo "$PROG: $*"; }

# check_precision_and_batch PRECISION BATCH: a usage error unless fp16/fp32 and MIN,OPT,MAX with
# 1 <= MIN <= OPT <= MAX
check_precision_and_batch() {
  [[ $1 == fp16 || $1 == fp32 ]] || usage_error "--precision must be fp16 or fp32, got '$1'"
  if [[ ! $2 =~ ^([0-9]+),([0-9]+),([0-9]+)$ ]] ||
    ((BASH_REMATCH[1] < 1 || BASH_REMATCH[1] > BASH_REMATCH[2] || BASH_REMATCH[2] > BASH_REMATCH[3])); then
    usage_error "--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got '$2'"
  fi
}

# bundle_dir BUNDLE: prints BUNDLE's absolute path (Python runs from / in these scripts, so the installed
# package is imported); fails unless it is an aminet-edge bundle
bundle_dir() {
  [[ -d $1 ]] || die "bundle not found: $1"
  [[ -f $1/config.json ]] || die "$1 is not an aminet-edge bundle (no config.json)"
  (cd "$1" && pwd)
}

# graph_name PRECISION: the single graph an engine of PRECISION is built from (aminet_edge.export.onnx_name)
graph_name() {
  if [[ $1 == fp32 ]]; then echo model.onnx; else echo "model_$1.onnx"; fi
}
