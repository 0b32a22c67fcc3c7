"""int8 graphs for CPUs (onnxruntime): the inpainting transformer's weight MatMuls dynamically quantised.

What is quantised: only the MatMuls with a weight initializer inside the inpainting blocks (`blocks.N`):
int8 weights per output channel (7-bit range, `reduce_range`, so AVX2 CPUs without VNNI cannot
saturate their 16-bit intermediate sums), uint8 activations quantised per tensor at run time (one
scale for the whole batch, so the onnxruntime backends run these graphs one image per call: see
aminet_edge/runtime/backends/onnxruntime_backend.py).
What stays float32: the backbone, both token embeddings, the clustering block, the adaptive mask (so
the tokens chosen for inpainting equal the fp32 graph's), the fused head and the score map.
The accuracy effect is measured by bench/export.py on MVTec bottle (see BENCHMARKS.md).
Needs the onnxruntime package (its quantisation tool); the result runs on onnxruntime only, never TensorRT.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx

_INPAINT_BLOCK = re.compile(r"(^|/)blocks\.\d+/")


def inpainting_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes with a weight initializer inside the inpainting blocks."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(i in weights for i in n.input) and _INPAINT_BLOCK.search(n.name)]


def quantize_graph(src: Path, dst: Path) -> int:
    """Write `dst`: `src` with its inpainting MatMuls dynamically quantised to int8. Returns their count.

    Raises ValueError if `src` has no such MatMul (e.g. model_a.onnx), ImportError without onnxruntime.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ImportError("int8 export needs onnxruntime (pip install 'aminet-edge[onnxruntime]')") from exc
    nodes = inpainting_matmuls(onnx.load(str(src)))
    if not nodes:
        raise ValueError(f"{src}: no inpainting-block MatMul with a weight to quantise")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the tool logs advice on pre-processing we do not need
    try:
        quantize_dynamic(str(src), str(dst), nodes_to_quantize=nodes, per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(quiet)
    return len(nodes)
