"""Reject, at export time, ONNX nodes that TensorRT / TensorRT-RTX cannot build, with the reason and the fix.

Checked (in the main graph and every subgraph):
- ScatterElements / ScatterND with a `reduction` other than "none": TensorRT's ONNX parser rejects them.
- ScatterND (no reduction) into ConstantOfShape zeros whose result feeds an Add: how the legacy torch
  exporter writes `index_put_(..., accumulate=True)`; duplicate indices are then silently not summed.
- Attention (opset 23, any domain): FP32 builds fail on TensorRT-RTX unless it is decomposed.
- Einsum: GEMM-like einsums have no Turing (SM75) tactics.
`onnx_export` runs `check_graph` on every graph it writes; the file is deleted when a check fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

_ONE_HOT_FIX = "express the reduction as a one-hot product and a sum (see aminet_edge/ops/reference.py)"
_WHY = {
    "scatter": ("ScatterElements/ScatterND with reduction={r!r} is rejected by TensorRT's ONNX parser", _ONE_HOT_FIX),
    "accumulate": ("ScatterND into zeros followed by Add is the legacy exporter's index_put_(accumulate=True): "
                   "values at duplicate indices overwrite each other instead of being summed (silently wrong)",
                   _ONE_HOT_FIX),
    "Attention": ("the opset-23 Attention node fails FP32 engine builds on TensorRT-RTX",
                  "write softmax(q @ k^T * scale) @ v explicitly under ONNX export "
                  "(see aminet_edge/model/transformer.py) or export with opset < 23"),
    "Einsum": ("GEMM einsums have no TensorRT tactics on Turing (SM75) and parse poorly elsewhere",
               "use matmul / explicit broadcasting instead of torch.einsum"),
}


class GraphCheckError(ValueError):
    """The exported graph holds a node TensorRT cannot build; the message names each node."""


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _reduction(node: onnx.NodeProto) -> str:
    for attr in node.attribute:
        if attr.name == "reduction":
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else str(value)
    return "none"


def _problem(node: onnx.NodeProto, producers: dict[str, str], consumers: dict[str, set[str]]) -> tuple[str, str] | None:
    """(why, fix) when `node` is rejected, else None."""
    if node.op_type in ("ScatterElements", "ScatterND"):
        reduction = _reduction(node)
        if reduction != "none":
            why, fix = _WHY["scatter"]
            return why.format(r=reduction), fix
        if node.op_type == "ScatterND" and producers.get(node.input[0]) == "ConstantOfShape" \
                and "Add" in consumers.get(node.output[0], set()):
            return _WHY["accumulate"]
    if node.op_type in ("Attention", "Einsum"):
        return _WHY[node.op_type]
    return None


def graph_problems(model: onnx.ModelProto) -> list[str]:
    """One line per rejected node: '<name> (<op type>): <why>; to avoid: <fix>'. Empty when the graph passes."""
    problems = []
    for graph in _graphs(model.graph):
        producers = {out: node.op_type for node in graph.node for out in node.output}
        consumers: dict[str, set[str]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, set()).add(node.op_type)
        for node in graph.node:
            found = _problem(node, producers, consumers)
            if found is not None:
                problems.append(f"{node.name or '<unnamed>'} ({node.op_type}): {found[0]}; to avoid: {found[1]}")
    return problems


def check_graph(model: onnx.ModelProto, where: str = "ONNX graph") -> None:
    """Raise GraphCheckError listing every rejected node of `model` (see module docstring)."""
    problems = graph_problems(model)
    if problems:
        raise GraphCheckError(f"{where}: {len(problems)} node(s) rejected (TensorRT cannot build them, "
                              "or they export wrongly):\n  " + "\n  ".join(problems))
