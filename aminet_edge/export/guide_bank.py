"""The nearest-normal guide's bank and threshold as the runtimes use them: read once from the bundle's weights
file (the bank's only copy in a bundle) and, for TensorRT, baked back into a graph.

`read_guide`: the weights file is verified against its recorded sha256 first (bundle.weights_file), then
its "guide.bank" (M, C) float16 and "guide.threshold" () float32 are read with safetensors' numpy API (no
torch, nothing unpickled), their shapes and values checked.
`bake_guide`: an exported graph with the guide's bank as a constant, for builders that take a self-contained
graph (TensorRT: its engines are built on the device and never shipped in a CPU bundle): the single
graph's guide_bank input becomes an initializer; model_a's guide_tokens output is replaced by the guide's
nodes (the reference's nearest_distance: a Gemm against the bank, ArgMin, Gather, a norm; then
distance > threshold) giving mask and, with the guide map, guide_distance (graph_io.baked_model_a_io).
Torch-free; `bake_guide` needs onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError, weights_file
from aminet_edge.export.graph_io import GUIDE_BANK, GUIDE_TOKENS, baked_model_a_io

BANK_KEY = "guide.bank"
THRESHOLD_KEY = "guide.threshold"


@dataclass(frozen=True)
class Guide:
    """bank: (M, C) float16 as stored (what the nearest_distance kernel reads); threshold: float32 value, in
    the features' units (a token is masked when its distance is above it)."""

    bank: np.ndarray
    threshold: np.float32

    @cached_property
    def bank32(self) -> np.ndarray:
        """The bank's values as float32 (M, C), contiguous: the single graph's guide_bank input, made once."""
        return np.ascontiguousarray(self.bank, np.float32)


def read_guide(bundle: str | Path, config: BundleConfig) -> Guide:
    """The bundle's guide from its verified weights file; BundleError naming the file and the problem."""
    path = weights_file(bundle, config)  # size and sha256 against config.json: a swapped file is refused here
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise ImportError("the nearest-normal guide's bank is read with safetensors (pip install safetensors, "
                          "part of every aminet-edge runtime extra)") from exc
    try:
        with safe_open(str(path), framework="numpy") as f:
            missing = [k for k in (BANK_KEY, THRESHOLD_KEY) if k not in f.keys()]
            if missing:
                raise BundleError(f"{path}: holds no {', '.join(missing)}, but config.json's model.mask is "
                                  "nearest_normal; rebuild the guide (`aminet-edge set-mask RUN DATA --mask "
                                  "nearest-normal`) or retrain")
            bank, threshold = f.get_tensor(BANK_KEY), f.get_tensor(THRESHOLD_KEY)
    except SafetensorError as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from exc
    cols = config.model.guide_columns(config.in_channels)
    if bank.ndim != 2 or len(bank) == 0 or bank.shape[1] != cols or bank.dtype != np.float16:
        raise BundleError(f"{path}: {BANK_KEY} is {bank.dtype} {bank.shape}, expected float16 (M, {cols}) "
                          "(model.guide_dims, else in_channels); the bundle is damaged: copy it again or retrain")
    if threshold.shape != () or not np.isfinite(threshold) or not threshold > 0:
        raise BundleError(f"{path}: {THRESHOLD_KEY} must be one finite number > 0, got {threshold!r}")
    if not np.isfinite(bank).all():
        raise BundleError(f"{path}: {BANK_KEY} holds NaN or infinite values; the bundle is damaged")
    return Guide(np.ascontiguousarray(bank), np.float32(threshold))


def _squared_norms(bank: np.ndarray) -> np.ndarray:
    """||b||^2 of each bank row (M,) float32, as reference.nearest_distance computes it (norm, squared)."""
    return np.square(np.sqrt(np.square(bank, dtype=np.float32).sum(1, dtype=np.float32)))


def bake_guide(model: Any, guide: Guide, guide_distance: bool) -> Any:
    """`model` (an onnx.ModelProto of a guided bundle's single graph or model_a) with the guide's bank as a
    constant, in place; returns it. guide_distance: model_a also outputs the distances (the guide map)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    if GUIDE_BANK in inputs:
        graph.initializer.append(numpy_helper.from_array(guide.bank32, GUIDE_BANK))
        graph.input.remove(next(i for i in graph.input if i.name == GUIDE_BANK))
        return model
    if GUIDE_TOKENS not in outputs:
        raise ValueError(f"graph has neither the input {GUIDE_BANK} nor the output {GUIDE_TOKENS}: not a guided "
                         f"bundle's single graph or model_a (inputs {inputs}, outputs {outputs})")
    tokens = next(o for o in graph.output if o.name == GUIDE_TOKENS)
    L, C = (d.dim_value for d in tokens.type.tensor_type.shape.dim[1:])
    const = [numpy_helper.from_array(guide.bank32, "/guide/bank"),
             numpy_helper.from_array(_squared_norms(guide.bank32), "/guide/bank_sq"),
             numpy_helper.from_array(np.array([-1, C], np.int64), "/guide/flat_shape"),
             numpy_helper.from_array(np.array([-1, L], np.int64), "/guide/token_shape"),
             numpy_helper.from_array(np.asarray(guide.threshold, np.float32), "/guide/threshold")]
    graph.initializer.extend(const)
    n = helper.make_node
    graph.node.extend([
        n("Reshape", [GUIDE_TOKENS, "/guide/flat_shape"], ["/guide/flat"], name="/guide/Reshape"),  # (N, C)
        # ||b||^2 - 2 q.b, as the reference's argmin scores
        n("Gemm", ["/guide/flat", "/guide/bank", "/guide/bank_sq"], ["/guide/scores"], name="/guide/Gemm",
          alpha=-2.0, beta=1.0, transB=1),
        n("ArgMin", ["/guide/scores"], ["/guide/nearest_index"], name="/guide/ArgMin", axis=1, keepdims=0),
        n("Gather", ["/guide/bank", "/guide/nearest_index"], ["/guide/nearest"], name="/guide/Gather", axis=0),
        n("Sub", ["/guide/flat", "/guide/nearest"], ["/guide/diff"], name="/guide/Sub"),
        n("ReduceL2", ["/guide/diff"], ["/guide/flat_distance"], name="/guide/ReduceL2", axes=[1], keepdims=0),
        n("Reshape", ["/guide/flat_distance", "/guide/token_shape"], ["guide_distance"], name="/guide/Reshape_1"),
        n("Greater", ["guide_distance", "/guide/threshold"], ["mask"], name="/guide/Greater"),
    ])
    made = {"mask": helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", L]),
            "guide_distance": helper.make_tensor_value_info("guide_distance", TensorProto.FLOAT, ["batch", L])}
    kept = {o.name: o for o in graph.output}
    want = baked_model_a_io("nearest_normal", "reconstruction+guide" if guide_distance else "reconstruction")[1]
    del graph.output[:]
    graph.output.extend([kept[name] if name in kept else made[name] for name in want])
    return model
