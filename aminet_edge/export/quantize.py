"""int8 graphs for CPUs: onnxruntime's (dynamic, `quantize_graph`) and OpenVINO's (static, `quantize_static`).

onnxruntime's: the inpainting transformer's weight MatMuls dynamically quantised.

What is quantised: only the MatMuls with a weight initializer inside the inpainting blocks (`blocks.N`):
int8 weights per output channel (7-bit range, `reduce_range`, so AVX2 CPUs without VNNI cannot
saturate their 16-bit intermediate sums), uint8 activations quantised per tensor at run time (one
scale for the whole batch, so the onnxruntime backends run these graphs one image per call: see
aminet_edge/runtime/backends/onnxruntime_backend.py).
What stays float32: the backbone, both token embeddings, the clustering block, the adaptive mask or the
nearest-normal guide (whose bank product is a Gemm outside the blocks) (so the tokens chosen for
inpainting equal the fp32 graph's), the fused head and the score map.
The accuracy effect is measured by bench/export.py on MVTec bottle (BENCHMARKS.md, "Export: graphs,
precisions, engines").
Needs the onnxruntime package (its quantisation tool); the result runs on onnxruntime only, never TensorRT.

OpenVINO's (`model_int8_static.onnx`): NNCF post-training quantisation of the fp32 single graph, scales
fixed from the bundle's normal training images (so a result never depends on its batch), written as
QuantizeLinear / DequantizeLinear pairs that OpenVINO's CPU plugin runs as int8. Quantised: the
inpainting branch (aminet_edge.export.node_names.in_inpainting: patch embedding, transformer blocks,
their norm). Kept float32 (NNCF's ignored scope): the backbone and the clustering branch (int8 there
changed 41 % of the mask's tokens on MVTec bottle: node_names says why), the adaptive mask or the
nearest-normal guide, the inpainting head, the score map and the token glue. Needs nncf (the `openvino` extra) and onnxruntime
(NNCF collects the statistics with it). Accuracy and speed: bench/openvino_accuracy.py,
bench/runtime.py (BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy", "CPU inference end to end").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from aminet_edge.export.node_names import in_inpainting

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


CALIBRATION_IMAGES = 128  # at most this many normal images calibrate the int8_static scales (evenly spaced)


def calibration_inputs(roots: Sequence[str | Path], size: int, mean: Sequence[float], std: Sequence[float],
                       limit: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Up to `limit` normal training images of the data sets at `roots` (any layout load_dataset reads;
    only their training split), evenly spaced, each preprocessed as the runtime does: (1, 3, size, size)
    float32. ValueError when a root has no training images or an image cannot be read."""
    from aminet_edge.data.datasets import load_dataset
    from aminet_edge.data.images import preprocess, read_image

    paths = [s.path for root in roots for s in load_dataset(root).train]
    if not paths:
        raise ValueError(f"no training images under {', '.join(str(r) for r in roots)}")
    picks = np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int))
    return [preprocess(read_image(paths[i]), size, mean, std)[None] for i in picks]


def require_nncf() -> Any:
    """The nncf module; ImportError naming the extra when it is not installed."""
    try:
        import nncf
    except ImportError as exc:
        raise ImportError("the OpenVINO int8 graph needs nncf (pip install 'aminet-edge[openvino]')") from exc
    return nncf


def quantize_static(src: Path, dst: Path, inputs: Sequence[np.ndarray],
                    constant: dict[str, np.ndarray] | None = None) -> int:
    """Write `dst`: the fp32 single graph `src` with its inpainting branch quantised to int8 (QDQ), scales
    calibrated on `inputs` (model inputs "images", each (1, 3, S, S) float32) with the graph's other inputs
    `constant` fed alike to each (the nearest-normal guide's bank). Returns the number of QuantizeLinear
    nodes written. ImportError naming the extra without nncf."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = onnx.load(str(src))
    keep = [n.name for n in model.graph.node if not in_inpainting(n.name)]
    nncf.set_log_level(logging.ERROR)  # one INFO line per node it leaves alone
    # 7-bit weights in every layer (NNCF's default does only the first): CPUs without VNNI (AVX2, AVX-512F)
    # sum u8 x s8 pairs in saturating 16-bit; with 8-bit weights that saturated on this project's AVX2 CPU
    # (tests/test_openvino_int8.py's bundle: maps correlated 0.95 with fp32's, 0.9995 with 7-bit weights)
    fix = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
    constant = constant or {}
    quantized = nncf.quantize(model, nncf.Dataset(list(inputs), lambda x: {"images": x, **constant}),
                              subset_size=len(inputs), ignored_scope=nncf.IgnoredScope(names=keep, validate=False),
                              advanced_parameters=fix)
    onnx.save(quantized, str(dst))
    return sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
