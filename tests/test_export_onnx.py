"""ONNX export vs PyTorch: single graph, split graphs with the C++ ops between them, fp16, int8, dynamic batch.

Tolerances: fp32 maps agree within atol 1e-5 + rtol 1e-3 of the map scale (onnxruntime fuses and reorders
float32 sums); masks must be identical. fp16 vs fp32 graphs: see test_fp16_graph_close_to_fp32.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aminet_edge import ops
from aminet_edge.bundle import BundleConfig, read_config
from aminet_edge.config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, ModelConfig, ScoreConfig
from aminet_edge.export import onnx_name
from aminet_edge.export.onnx_export import export_onnx
from aminet_edge.model.pipeline import build_modules, load_pipeline, save_bundle

ort = pytest.importorskip("onnxruntime")

SMALL = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=1,
                    num_clusters=4)
BOTTLE = Path("/work/shared/data/mvtec_bottle")


def make_bundle(root: Path, model: ModelConfig = SMALL, pretrained: bool = False) -> Path:
    """A bundle with random AMI-Net weights (seeded) and a random or pretrained backbone."""
    torch.manual_seed(0)
    config = BundleConfig(model=dataclasses.replace(model, mask="adaptive"), in_channels=176,
                          score=ScoreConfig(map="reconstruction"), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    extractor, aminet = build_modules(config, pretrained=pretrained)
    config.mean, config.std = extractor.mean, extractor.std  # type: ignore[assignment]
    save_bundle(root, config, extractor, aminet)
    return root


_EXPORTED: dict[str, Path] = {}


def exported_bundle(factory: pytest.TempPathFactory) -> Path:
    """The SMALL bundle with all six graphs (fp32 and fp16, single and split), exported once per session
    and shared by test_export_onnx, test_graph_checks and test_engine (they import this module)."""
    if "small" not in _EXPORTED:
        root = make_bundle(factory.mktemp("bundle"))
        export_onnx(root, "fp32", split=True)
        export_onnx(root, "fp16", split=True)
        _EXPORTED["small"] = root
    return _EXPORTED["small"]


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_bundle(tmp_path_factory)


def images(batch: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).numpy()


def session(path: Path):  # type: ignore[no-untyped-def]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_maps_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-3) -> None:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 + rtol * float(np.abs(want).max()))


def test_io_names_shapes_and_record(bundle: Path) -> None:
    s = session(bundle / "model.onnx")
    assert [(i.name, i.shape, i.type) for i in s.get_inputs()] == [("images", ["batch", 3, 64, 64], "tensor(float)")]
    assert [(o.name, o.shape, o.type) for o in s.get_outputs()] == [
        ("amap", ["batch", 64, 64], "tensor(float)"), ("score", ["batch"], "tensor(float)"),
        ("mask", ["batch", 16], "tensor(bool)")]
    a, b = session(bundle / "model_a.onnx"), session(bundle / "model_b.onnx")
    assert [(o.name, o.shape) for o in a.get_outputs()] == [
        ("features", ["batch", 176, 16, 16]), ("cluster_tokens", ["batch", 16, 32]), ("centers", ["batch", 4, 32]),
        ("inpaint_tokens", ["batch", 16, 32])]
    assert [(i.name, i.type) for i in b.get_inputs()] == [("inpaint_tokens", "tensor(float)"), ("mask", "tensor(bool)")]
    assert [(o.name, o.shape) for o in b.get_outputs()] == [("recon", ["batch", 176, 16, 16])]
    onnx = read_config(bundle).artifacts["onnx"]
    assert {k: v["path"] for k, v in onnx.items()} == {
        "model": "model.onnx", "model_a": "model_a.onnx", "model_b": "model_b.onnx", "model_fp16": "model_fp16.onnx",
        "model_a_fp16": "model_a_fp16.onnx", "model_b_fp16": "model_b_fp16.onnx"}
    assert onnx["model_fp16"]["precision"] == "fp16" and onnx["model"]["opset"] == 17


def test_fp16_graph_types(bundle: Path) -> None:
    """fp16 graph: I/O float32; convolutions, matrix products, LayerNorm and softmax inside the networks
    (nodes named after a submodule: /extractor/..., /blocks.0/...) in float16; the mask statistics (ArgMin,
    ReduceMin, ReduceL2) and the score map (upsampling and blur as two MatMuls with the constant smoothing
    matrices), top-level nodes, in float32. No reflect Pad, Resize or 1-D Conv: the blur's scipy border is
    inside the smoothing matrices."""
    import onnx
    from onnx import TensorProto

    model = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / "model_fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT, TensorProto.FLOAT,
                                                                          TensorProto.BOOL]
    nets, tail = {}, {}  # op type -> input element types, inside the networks / in the float32 tail
    for node in model.graph.node:
        where = nets if node.name.count("/") > 1 else tail
        where.setdefault(node.op_type, set()).add(types.get(node.input[0]) if node.input else None)
    for op in ("Conv", "MatMul", "LayerNormalization", "Softmax"):
        assert nets[op] == {TensorProto.FLOAT16}, op
    for op in ("ArgMin", "ReduceMin", "MatMul", "ReduceL2"):
        assert tail[op] == {TensorProto.FLOAT}, op
    assert not [n for n in model.graph.node if n.op_type == "Pad" and any(a.s == b"reflect" for a in n.attribute)]
    assert "Resize" not in tail and "Conv" not in tail


@pytest.mark.parametrize("batch", [1, 3])
def test_single_graph_matches_torch(bundle: Path, batch: int) -> None:
    pipeline, _ = load_pipeline(bundle)
    x = images(batch, seed=batch)
    amap, score, mask = session(bundle / "model.onnx").run(["amap", "score", "mask"], {"images": x})
    with torch.no_grad():
        t_amap, t_score, t_mask = (t.numpy() for t in pipeline(torch.from_numpy(x)))
    assert mask.dtype == np.bool_ and np.array_equal(mask, t_mask)
    assert_maps_close(amap, t_amap)
    assert_maps_close(score, t_score)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_split_pipeline_matches_single_graph(precision: str, request: pytest.FixtureRequest) -> None:
    """model_a -> C++ adaptive_mask -> model_b -> C++ score_map equals the single graph of the same precision
    at fp32 tolerance: the halves run the single graph's ops; only its float32 tail (mask statistics, score
    map) moves to the C++ kernels. int8 pairs the fp32 model_a with model_b_int8."""
    root = request.getfixturevalue("int8_bundle" if precision == "int8" else "bundle")
    config = read_config(root)
    names = {part: onnx_name(part, precision) for part in ("model", "model_a", "model_b")}
    if precision == "int8":
        names["model_a"] = "model_a.onnx"
    x = images(2, seed=5)
    amap, score, mask = session(root / names["model"]).run(["amap", "score", "mask"], {"images": x})
    feat, tokens, centers, inpaint = session(root / names["model_a"]).run(
        ["features", "cluster_tokens", "centers", "inpaint_tokens"], {"images": x})
    assert feat.dtype == tokens.dtype == np.float32
    s_mask, _, _ = ops.adaptive_mask(tokens, centers, config.model.mask_lambda, backend="cpp")
    (recon,) = session(root / names["model_b"]).run(["recon"], {"inpaint_tokens": inpaint, "mask": s_mask})
    s_amap, s_score = ops.score_map(feat, recon, (64, 64), config.score.sigma, config.score.image_score, backend="cpp")
    assert np.array_equal(s_mask, mask)
    assert_maps_close(s_amap, amap)
    assert_maps_close(s_score, score)


@pytest.mark.parametrize("lam, precision", [(0.0, "fp32"), (1.5, "int8")])
def test_graphs_use_the_bundles_mask_lambda(tmp_path: Path, lam: float, precision: str) -> None:
    """Exported with a non-default lambda, the fp32 (and int8) graphs' masks equal the C++ kernel's at that
    lambda. The clustering embedding is scaled up (x100) and the images hold bright squares at different
    places, so that masks vary between images and differ from the masks at lambda 0.5 (random test
    weights otherwise give one mask for every image, and a hard-coded lambda would pass)."""

    torch.manual_seed(0)
    config = BundleConfig(model=dataclasses.replace(SMALL, mask="adaptive", mask_lambda=lam), in_channels=176,
                          score=ScoreConfig(map="reconstruction"),
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)
    extractor, aminet = build_modules(config)
    with torch.no_grad():
        aminet.embed_cluster.weight.mul_(100.0)
    save_bundle(tmp_path, config, extractor, aminet)
    export_onnx(tmp_path, precision, split=False)  # model.onnx (and model_int8.onnx)
    x = images(4, seed=0) * 0.3
    for i, (r, c) in enumerate([(0, 0), (16, 40), (40, 8), (30, 30)]):
        x[i, :, r:r + 20, c:c + 20] += 3.0
    with torch.no_grad():
        tokens, centers = (t.numpy() for t in aminet.cluster(extractor(torch.from_numpy(x))))
    want, _, _ = ops.adaptive_mask(tokens, centers, lam, backend="cpp")
    default, _, _ = ops.adaptive_mask(tokens, centers, 0.5, backend="cpp")
    assert len({m.tobytes() for m in want}) > 1 and not np.array_equal(want, default)
    for name in ("model.onnx", "model_int8.onnx")[:1 + (precision == "int8")]:
        (mask,) = session(tmp_path / name).run(["mask"], {"images": x})
        np.testing.assert_array_equal(mask, want, err_msg=name)


def test_fp16_graph_close_to_fp32(bundle: Path) -> None:
    """fp16 backbone/transformers vs fp32: maps within 5% of the map scale (atol) and 5% relative on the
    image score; at most 1 token in 16 per image flips its mask (tokens near a cluster boundary)."""
    x = images(3, seed=11)
    amap, score, mask = session(bundle / "model.onnx").run(["amap", "score", "mask"], {"images": x})
    h_amap, h_score, h_mask = session(bundle / "model_fp16.onnx").run(["amap", "score", "mask"], {"images": x})
    assert h_amap.dtype == np.float32 and np.isfinite(h_amap).all()
    np.testing.assert_allclose(h_amap, amap, rtol=0.05, atol=0.05 * float(np.abs(amap).max()))
    np.testing.assert_allclose(h_score, score, rtol=0.05)
    assert (h_mask != mask).sum(1).max() <= 1


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its own bundle: the shared one holds only TensorRT-compatible graphs (test_graph_checks scans it)."""
    root = make_bundle(tmp_path_factory.mktemp("int8"))
    export_onnx(root, "int8", split=True)
    return root


def test_int8_quantises_only_the_inpainting_blocks(int8_bundle: Path) -> None:
    import onnx

    from aminet_edge.export.quantize import inpainting_matmuls

    def ops_of(name: str) -> list[str]:
        return [n.op_type for n in onnx.load(str(int8_bundle / name)).graph.node]

    fp32 = onnx.load(str(int8_bundle / "model.onnx"))
    chosen = inpainting_matmuls(fp32)
    assert len(chosen) == 4 * SMALL.inpaint_depth  # qkv, proj, fc1, fc2 per block
    assert not any("aggregation" in n for n in chosen)  # the clustering block, hence the mask, stays fp32
    q = ops_of("model_int8.onnx")
    assert q.count("MatMulInteger") == len(chosen)
    assert q.count("MatMul") == ops_of("model.onnx").count("MatMul") - len(chosen)
    assert ops_of("model_b_int8.onnx").count("MatMulInteger") == len(chosen)
    onnx_rec = read_config(int8_bundle).artifacts["onnx"]
    assert {k: v["path"] for k, v in onnx_rec.items() if k.endswith("_int8")} == {
        "model_int8": "model_int8.onnx", "model_a_int8": "model_a.onnx", "model_b_int8": "model_b_int8.onnx"}
    assert onnx_rec["model_int8"]["precision"] == "int8"


def test_int8_graph_close_to_fp32_same_mask(int8_bundle: Path) -> None:
    """int8 inpainting vs fp32: identical masks (decided in fp32), maps within 5% of the map scale, score 5%."""
    x = images(3, seed=12)
    amap, score, mask = session(int8_bundle / "model.onnx").run(["amap", "score", "mask"], {"images": x})
    q_amap, q_score, q_mask = session(int8_bundle / "model_int8.onnx").run(["amap", "score", "mask"], {"images": x})
    assert np.array_equal(q_mask, mask)
    assert not np.array_equal(q_amap, amap)  # the quantised graph really runs int8 products
    np.testing.assert_allclose(q_amap, amap, rtol=0.05, atol=0.05 * float(np.abs(amap).max()))
    np.testing.assert_allclose(q_score, score, rtol=0.05)


def test_constant_pads_folded_into_convolutions(bundle: Path) -> None:
    """EfficientNet-Lite's asymmetric TF-SAME pads live in the Conv nodes; only the score map's reflect
    pads (no Conv after them) stay Pad nodes. Exactness: test_single_graph_matches_torch."""
    import onnx

    for name in ("model.onnx", "model_a.onnx", "model_fp16.onnx"):
        nodes = onnx.load(str(bundle / name)).graph.node
        modes = [next((a.s for a in n.attribute if a.name == "mode"), b"constant") for n in nodes if n.op_type == "Pad"]
        assert b"constant" not in modes, name
        pads = [list(a.ints) for n in nodes if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
        assert [0, 0, 1, 1] in pads, name  # a stride-2 TF-SAME conv on an even input: one pixel after


def test_export_command_int8(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main

    root = make_bundle(tmp_path / "b")
    result = CliRunner().invoke(main, ["export", str(root), "--precision", "int8", "--no-split"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # make_bundle records no training data, so the int8 graph cannot be validated (tests/test_int8_validation.py)
    assert lines[0] == f"model: {root / 'model_int8.onnx'}" and len(lines) == 2
    assert lines[1].startswith("int8 graphs not validated (config.json records no training data (train.roots))")
    assert (root / "model.onnx").is_file() and not (root / "model_b_int8.onnx").exists()


def test_export_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("*.onnx", "engines"))
    export_onnx(copy, "fp32", split=False)
    assert (copy / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


@pytest.mark.skipif(not (BOTTLE / "test").is_dir(), reason=f"real images not found at {BOTTLE}")
def test_real_bottle_images_pretrained_backbone(tmp_path: Path) -> None:
    """Preset "tiny" (128 px), pretrained efficientnet_lite0, random AMI-Net: 3 bottle test images."""
    from aminet_edge.data.batches import load_batches

    root = make_bundle(tmp_path / "tiny", PRESETS["tiny"], pretrained=True)
    export_onnx(root, "fp32", split=False)
    config = read_config(root)
    paths = sorted(str(p) for p in (BOTTLE / "test").rglob("*.png"))[:: 40][:3]
    x = next(iter(load_batches(paths, 128, config.mean, config.std, 3))).numpy()
    pipeline, _ = load_pipeline(root)
    amap, score, mask = session(root / "model.onnx").run(["amap", "score", "mask"], {"images": x})
    with torch.no_grad():
        t_amap, t_score, t_mask = (t.numpy() for t in pipeline(torch.from_numpy(x)))
    assert np.array_equal(mask, t_mask)
    assert_maps_close(amap, t_amap)
    assert_maps_close(score, t_score)
