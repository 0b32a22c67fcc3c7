"""Exact rewrites of an exported ONNX graph that runtimes miss: zero Pad nodes folded into their Conv, and
Casts of a graph input to its own type dropped.

EfficientNet-Lite's stride-2 convolutions use TF "SAME" padding, asymmetric, which PyTorch can only
express as F.pad + Conv; the exported Pad (its pads computed by a chain of constant nodes) survives
onnxruntime's own fusion and costs a copy of the activation. ONNX Conv takes begin/end pads itself, so the pair becomes
one Conv with identical output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


def _constant_value(name: str, model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of tensor `name` if it depends on constants only (evaluated by onnx's reference runtime),
    else None."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    needed: set[int] = set()
    stack = [name]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in initializers:
            continue
        node = producers.get(tensor)
        if node is None:  # a graph input: not constant
            return None
        if id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in graph.node if id(n) in needed]  # graph order is topological
    used = {i for n in nodes for i in n.input}
    sub = onnx.helper.make_graph(nodes, "constant", [], [onnx.helper.make_empty_tensor_value_info(name)],
                                 [t for k, t in initializers.items() if k in used])
    evaluator = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=model.opset_import))
    outputs: list[Any] = list(evaluator.run(None, {}))
    return np.asarray(outputs[0])


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Fold each constant, zero, spatial-only Pad feeding exactly one Conv into that Conv. Returns the count."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs:
            continue
        conv = users[0]
        pads = _constant_value(pad.input[1], model, producers)
        fill = _constant_value(pad.input[2], model, producers) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if pads is None or fill is None or np.any(fill != 0) or pads.size != 8:
            continue
        begin, end = pads[:4], pads[4:]
        auto_pad = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
        if np.any(pads < 0) or np.any(begin[:2]) or np.any(end[:2]) or auto_pad != b"NOTSET":
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [int(old[0] + begin[2]), int(old[1] + begin[3]), int(old[2] + end[2]), int(old[3] + end[3])]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    _drop_unused_nodes(graph)
    return len(folded)


def drop_input_identity_casts(model: onnx.ModelProto) -> int:
    """Remove each Cast of a graph input to the input's own type (the tracer records `.float()` of a float32
    input, e.g. the guide's bank: a runtime that keeps the Cast would copy the whole bank each call); its
    readers read the input itself. Returns the count."""
    graph = model.graph
    types = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    outputs = {o.name for o in graph.output}
    dropped = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in types and n.output[0] not in outputs
               and next(a.i for a in n.attribute if a.name == "to") == types[n.input[0]]]
    for cast in dropped:
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == cast.output[0]:
                    node.input[k] = cast.input[0]
        graph.node.remove(cast)
    return len(dropped)


def _drop_unused_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads any more (the folded pads' constant chains)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
