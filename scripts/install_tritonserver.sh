#!/usr/bin/env bash
# Install NVIDIA's tritonserver (2.51, CPU + Python backend) from the PyPI wheel nvidia-pytriton, binary only:
# the wheel is unpacked with --no-deps into a cache folder, never into site-packages, because its Python
# package pins numpy<2 and would replace the project's numpy. aminet_edge.serving.server finds it there.
#   scripts/install_tritonserver.sh            # -> ~/.cache/aminet-edge/pytriton-0.7.0
#   AMINET_TRITON_HOME=/opt/triton scripts/install_tritonserver.sh
set -euo pipefail
version="0.7.0"  # keep equal to aminet_edge/serving/server.py PYTRITON_VERSION
home="${AMINET_TRITON_HOME:-$HOME/.cache/aminet-edge/pytriton-$version}"
if [[ -x "$home/pytriton/tritonserver/bin/tritonserver" ]]; then
  echo "tritonserver already installed in $home"
  exit 0
fi
python -m pip install -q --no-deps --target "$home" "nvidia-pytriton==$version"
echo "tritonserver installed in $home"
