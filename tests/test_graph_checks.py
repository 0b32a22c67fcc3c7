"""The export-time reject-list: each rejected node type in a tiny graph, and the real exported graph passes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from aminet_edge.export.graph_checks import GraphCheckError, check_graph, graph_problems


def graph_with(node: onnx.NodeProto, opset: int = 18) -> onnx.ModelProto:
    """A one-node model whose inputs/outputs are whatever the node names (types only, for the checker)."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.input if n]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output]
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("op, inputs, why", [
    ("ScatterElements", ["data", "idx", "upd"], "reduction='add'"),
    ("ScatterND", ["data", "idx", "upd"], "reduction='add'"),
])
def test_scatter_with_reduction_rejected(op: str, inputs: list[str], why: str) -> None:
    model = graph_with(helper.make_node(op, inputs, ["y"], name="acc_scatter", reduction="add"))
    with pytest.raises(GraphCheckError, match=rf"acc_scatter \({op}\): .*{why}.*TensorRT's ONNX parser.*to avoid"):
        check_graph(model)


def test_scatter_without_reduction_passes() -> None:
    assert graph_problems(graph_with(helper.make_node("ScatterElements", ["d", "i", "u"], ["y"], name="s"))) == []
    assert graph_problems(graph_with(helper.make_node("ScatterND", ["d", "i", "u"], ["y"], name="s",
                                                      reduction="none"))) == []


def test_attention_rejected() -> None:
    model = graph_with(helper.make_node("Attention", ["q", "k", "v"], ["y"], name="sdpa0"), opset=23)
    with pytest.raises(GraphCheckError, match=r"sdpa0 \(Attention\): .*FP32 engine builds on TensorRT-RTX.*opset < 23"):
        check_graph(model, where="m.onnx")


def test_einsum_rejected_inside_subgraph() -> None:
    einsum = helper.make_node("Einsum", ["a", "b"], ["c"], name="gemm_einsum", equation="ij,jk->ik")
    body = helper.make_graph([einsum], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["d"])], "else", [],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=body, else_branch=other)
    problems = graph_problems(graph_with(node))
    assert len(problems) == 1 and problems[0].startswith("gemm_einsum (Einsum): ") and "Turing" in problems[0]


def test_message_lists_every_node_and_file() -> None:
    nodes = [helper.make_node("Einsum", ["a", "b"], ["c"], name="e1", equation="ij,jk->ik"),
             helper.make_node("Einsum", ["c", "b"], ["y"], name="e2", equation="ij,jk->ik")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(GraphCheckError, match=r"x\.onnx: 2 node\(s\)(.|\n)*e1 \(Einsum\)(.|\n)*e2 \(Einsum\)"):
        check_graph(helper.make_model(graph), where="x.onnx")


def test_real_exported_graph_passes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from aminet_edge.export.onnx_export import export_onnx
    from test_export_onnx import make_bundle

    paths = export_onnx(make_bundle(tmp_path), "fp16", split=True)
    for path in paths.values():
        assert graph_problems(onnx.load(str(path))) == [], path
