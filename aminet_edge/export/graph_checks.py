"""Reject, at export time, ONNX nodes that TensorRT / TensorRT-RTX cannot build, with the reason and the fix.

Checked (in the main graph and every subgraph):
- ScatterElements / ScatterND with a `reduction` other than "none": TensorRT's ONNX parser rejects them,
  and the legacy torch exporter can silently drop `index_put_(accumulate=True)`'s accumulation.
- Attention (opset 23, any domain): FP32 builds fail on TensorRT-RTX unless it is decomposed.
- Einsum: GEMM-like einsums have no Turing (SM75) tactics.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

_WHY = {
    "scatter": ("ScatterElements/ScatterND with reduction={r!r} is rejected by TensorRT's ONNX parser "
                "(and the legacy exporter may silently drop index_put_ accumulation)",
                "express the reduction as a one-hot product and a sum (see aminet_edge/ops/reference.py)"),
    "Attention": ("the opset-23 Attention node fails FP32 engine builds on TensorRT-RTX",
                  "write softmax(q @ k^T * scale) @ v explicitly under ONNX export "
                  "(see aminet_edge/model/transformer.py) or export with opset < 23"),
    "Einsum": ("GEMM einsums have no TensorRT tactics on Turing (SM75) and parse poorly elsewhere",
               "use matmul / explicit broadcasting instead of torch.einsum"),
}


class GraphCheckError(ValueError):
    """The exported graph holds a node TensorRT cannot build; the message names each node."""


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def graph_problems(model: onnx.ModelProto) -> list[str]:
    """One line per rejected node: '<name> (<op type>): <why>; <how to avoid>'. Empty when the graph passes."""
    problems = []
    for node in _nodes(model.graph):
        why = None
        if node.op_type in ("ScatterElements", "ScatterND"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            reduction = attrs.get("reduction", b"none")
            reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
            if reduction != "none":
                why, fix = _WHY["scatter"]
                why = why.format(r=reduction)
        elif node.op_type in ("Attention", "Einsum"):
            why, fix = _WHY[node.op_type]
        if why is not None:
            problems.append(f"{node.name or '<unnamed>'} ({node.op_type}): {why}; to avoid: {fix}")
    return problems


def check_graph(model: onnx.ModelProto, where: str = "ONNX graph") -> None:
    """Raise GraphCheckError listing every rejected node of `model` (see module docstring)."""
    problems = graph_problems(model)
    if problems:
        raise GraphCheckError(f"{where}: {len(problems)} node(s) TensorRT cannot build:\n  " + "\n  ".join(problems))
