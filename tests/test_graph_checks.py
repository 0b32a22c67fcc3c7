"""The export-time reject-list: each rejected node type in a tiny graph, two caught during a real torch export
(and the file removed), and every graph aminet-edge exports passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _torch_export(module: Any, args: tuple[Any, ...], path: Path) -> None:
    """Export a torch module through onnx_export's exporter (legacy, checks the graph, deletes it on failure)."""
    from aminet_edge.export.onnx_export import _export

    _export(module, args, (tuple(f"in{i}" for i in range(len(args))), ("out",)), path, 17)


def test_export_rejects_einsum_and_deletes_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Gemm(torch.nn.Module):
        def forward(self, a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
            return torch.einsum("bij,jk->bik", a, b)

    path = tmp_path / "gemm.onnx"
    with pytest.raises(GraphCheckError, match=r"gemm\.onnx: 1 node(.|\n)*\(Einsum\): GEMM einsums .*Turing"):
        _torch_export(Gemm(), (torch.ones(2, 3, 4), torch.ones(4, 5)), path)
    assert not path.exists()


def test_export_rejects_dropped_index_put_accumulation(tmp_path: Path) -> None:
    """The legacy exporter writes index_put_(accumulate=True) as ScatterND into zeros + Add; the duplicate
    index 1 below is then summed by torch (2.0) but overwritten by the graph (1.0)."""
    torch = pytest.importorskip("torch")

    class Histogram(torch.nn.Module):
        def forward(self, values: "torch.Tensor", index: "torch.Tensor") -> "torch.Tensor":
            return torch.zeros(4).index_put((index,), values, accumulate=True)

    with pytest.raises(GraphCheckError, match=r"\(ScatterND\): .*index_put_\(accumulate=True\).*one-hot"):
        _torch_export(Histogram(), (torch.ones(3), torch.tensor([0, 1, 1])), tmp_path / "hist.onnx")


def test_real_exported_graphs_pass(tmp_path_factory: pytest.TempPathFactory) -> None:
    """All six exported graphs (fp32/fp16, single and split) of the shared test bundle pass the check."""
    pytest.importorskip("torch")
    from test_export_onnx import exported_bundle

    paths = sorted(exported_bundle(tmp_path_factory).glob("*.onnx"))
    assert len(paths) == 6
    for path in paths:
        assert graph_problems(onnx.load(str(path))) == [], path
