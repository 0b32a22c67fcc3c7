"""The nearest-normal guide (ModelConfig.mask = "nearest_normal") through every export path and backend.

The bundle: test_detector's tiny bundle (64 px, random weights) with a guide built as training builds it
from generated scratch-free surfaces (test_detector.make_bundle(mask="nearest_normal")) and the guide's
score map ("reconstruction+guide": the guide's token distances added to the map), exported fp32, single
and split, so every backend's map holds the guide term too. The truth: the torch backend with the pure-PyTorch reference ops, whose mask is the
guide's (checked here against an independent float64 cdist search). Tolerances are test_detector's
(assert_agree: token masks identical, maps within rtol 1e-4, and why there). fp16 / int8 graphs: the
guide runs in float32 in every graph, so int8 graphs (inpainting branch only) give masks identical to
fp32's; fp16 backbones move the features the guide reads, so there at most 1 token in 16 per image flips
(as test_export_onnx allows for the adaptive mask). The bank lies in the weights file only: the single
graphs take it as an input, model_a outputs the pooled tokens the split backends' nearest_distance kernel
measures, TensorRT builds from graphs with it baked back in (checked here against the reference too). The
simulated TensorRT split path and the CUDA agreement are in test_detector (parametrised over the mask),
the TensorRT-RTX build in test_engine, the C library's in test_c_api.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_detector import (CPU_BACKENDS, GUIDE_MAP, _preprocessed, assert_agree, detector, generated_images,  # noqa: E402
                           inputs_for_agreement, normal_images, shared_bundle)

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.config import ScoreConfig  # noqa: E402
from aminet_edge.runtime import Detector, Result  # noqa: E402
from aminet_edge.runtime.backends import backend_status  # noqa: E402

GUIDED = "nearest_normal"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory, GUIDED, GUIDE_MAP)


@pytest.fixture(scope="module")
def reference(bundle: Path) -> list[Result]:
    """Predictions of the torch backend with the pure-PyTorch reference ops: the truth."""
    det = detector(bundle, "torch", ops_backend="reference")
    return det.predict(inputs_for_agreement())  # type: ignore[return-value]


def test_reference_mask_is_the_guides(bundle: Path) -> None:
    """The pipeline's mask = (distance of each token's pooled feature to its nearest bank row, by float64
    cdist) > threshold, except within 1e-5 of the threshold; it masks some tokens and not others, and is
    not the adaptive mask the same weights give (so a backend running that instead fails the tests)."""
    from aminet_edge.model.pipeline import load_pipeline

    pipeline, config = load_pipeline(bundle)
    x = _preprocessed(generated_images(), config)
    with torch.no_grad():
        feat = pipeline.extractor(x)
        _, _, mask = pipeline(x)
        guide, pipeline.guide, pipeline.score = pipeline.guide, None, ScoreConfig()
        _, _, adaptive = pipeline(x)
    k = config.model.patch_size
    tokens = feat.double().unfold(2, k, k).unfold(3, k, k).mean((-1, -2)).flatten(2).transpose(1, 2)  # (B, L, C)
    dist = torch.cdist(tokens, guide.bank.double()[None].expand(len(x), -1, -1)).min(-1).values
    threshold = float(guide.threshold)
    sure = (dist - threshold).abs() > 1e-5 * threshold
    assert sure.float().mean() > 0.9
    assert torch.equal(mask[sure], (dist > threshold)[sure])
    assert 0 < mask.sum() < mask.numel() and not torch.equal(mask, adaptive)
    assert mask[1::2].float().mean() > mask[::2].float().mean()  # the scratched surfaces stand out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_backend_agrees_with_torch_reference(bundle: Path, reference: list[Result], backend: str) -> None:
    reason = backend_status(backend, bundle, read_config(bundle), "cpu")
    if reason is not None:
        pytest.skip(reason)
    det = detector(bundle, backend)
    for got, want in zip(det.predict(inputs_for_agreement()), reference):
        assert_agree(got, want)
    masks = np.stack([r.token_mask for r in reference])
    assert masks.any() and not masks.all()
    if backend.endswith("-split") or backend == "torch":  # split: model_a's mask, no adaptive-mask kernel
        assert "nearest-normal guide" in det.backend_description and "adaptive" not in det.backend_description


def _session(path: Path):  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _inputs(config) -> np.ndarray:  # type: ignore[no-untyped-def]
    return _preprocessed(generated_images(), config).numpy()


def test_graphs_compute_the_guide(bundle: Path) -> None:
    """The bank lies once in the bundle, in its weights file: no graph holds an (M, C) constant. The single
    graph takes it as its input guide_bank (read by the guide's product and its Gather, its ArgMin in the
    graph); model_a outputs (features, guide_tokens, inpaint_tokens), no clustering branch, its guide_tokens
    the reference's pooled token features; the single graph's mask fed the weights' bank equals the
    reference pipeline's."""
    onnx = pytest.importorskip("onnx")
    from safetensors.numpy import load_file

    from aminet_edge.model.guide import token_features
    from aminet_edge.model.pipeline import load_pipeline

    pipeline, config = load_pipeline(bundle)
    bank = pipeline.guide.bank.float().numpy()
    a = _session(bundle / "model_a.onnx")
    L, C = config.model.grid_size ** 2, config.in_channels
    assert [(o.name, o.shape[1:], o.type) for o in a.get_outputs()] == [
        ("features", [C, config.model.feature_size, config.model.feature_size], "tensor(float)"),
        ("guide_tokens", [L, C], "tensor(float)"), ("inpaint_tokens", [L, config.model.embed_dim], "tensor(float)")]
    single = _session(bundle / "model.onnx")
    assert [(i.name, i.shape, i.type) for i in single.get_inputs()] == [
        ("images", ["batch", 3, config.model.image_size, config.model.image_size], "tensor(float)"),
        ("guide_bank", list(bank.shape), "tensor(float)")]
    x = _inputs(config)
    with torch.no_grad():
        _, _, want = pipeline(torch.from_numpy(x))
        tokens = token_features(pipeline.extractor(torch.from_numpy(x)), config.model.patch_size)
    (got,) = single.run(["mask"], {"images": x, "guide_bank": bank})
    np.testing.assert_array_equal(got, want.numpy())
    (got_tokens,) = a.run(["guide_tokens"], {"images": x})
    np.testing.assert_allclose(got_tokens, tokens.numpy(), rtol=1e-5, atol=1e-6)
    from onnx import numpy_helper

    norms = (bank.astype(np.float64) ** 2).sum(1)
    for name in ("model.onnx", "model_a.onnx", "model_b.onnx"):
        graph = onnx.load(str(bundle / name)).graph
        assert not [i.name for i in graph.initializer if sorted(i.dims) == sorted(bank.shape)], name
        vectors = [numpy_helper.to_array(i) for i in graph.initializer if list(i.dims) == [len(bank)]]
        assert not [v for v in vectors if np.allclose(v, norms, rtol=1e-3)], name  # nor the bank's squared norms
    graph = onnx.load(str(bundle / "model.onnx")).graph
    readers = {n.op_type for n in graph.node if "guide_bank" in n.input}
    assert {"Gemm", "Gather"} <= readers and "ArgMin" in {n.op_type for n in graph.node if n.name.startswith("/guide/")}
    assert not [n.name for n in onnx.load(str(bundle / "model_a.onnx")).graph.node
                if "cluster" in n.name or "aggregation" in n.name]
    weights = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    np.testing.assert_array_equal(weights["guide.bank"].astype(np.float32), bank)
    assert sum(v.shape == bank.shape for v in weights.values()) == 1


def test_baked_graphs_compute_the_reference_guide(bundle: Path) -> None:
    """What TensorRT builds from (guide_bank.bake_guide): the single graph with the bank as a constant and
    no bank input gives the fed graph's outputs exactly; model_a with the guide's nodes appended outputs
    (features, mask, inpaint_tokens, guide_distance), its mask the reference's, its distances the
    reference's to 1e-5; both pass the TensorRT graph check."""
    onnx = pytest.importorskip("onnx")
    from aminet_edge.export.graph_checks import graph_problems
    from aminet_edge.export.guide_bank import bake_guide, read_guide
    from aminet_edge.model.pipeline import load_pipeline

    config = read_config(bundle)
    guide = read_guide(bundle, config)
    pipeline, _ = load_pipeline(bundle)
    x = _inputs(config)
    with torch.no_grad():
        _, _, mask, dist = pipeline.restore(torch.from_numpy(x))
    single = bake_guide(onnx.load(str(bundle / "model.onnx")), guide, True)
    model_a = bake_guide(onnx.load(str(bundle / "model_a.onnx")), guide, True)
    for model in (single, model_a):
        onnx.checker.check_model(model)
        assert graph_problems(model) == []
    ort = pytest.importorskip("onnxruntime")
    baked = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in baked.get_inputs()] == ["images"]
    fed = _session(bundle / "model.onnx").run(None, {"images": x, "guide_bank": guide.bank32})
    for got, want in zip(baked.run(None, {"images": x}), fed):
        np.testing.assert_array_equal(got, want)
    a = ort.InferenceSession(model_a.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in a.get_outputs()] == ["features", "mask", "inpaint_tokens", "guide_distance"]
    got_mask, got_dist = a.run(["mask", "guide_distance"], {"images": x})
    np.testing.assert_array_equal(got_mask, mask.numpy())
    np.testing.assert_allclose(got_dist, dist.numpy(), rtol=1e-5)


def test_swapped_or_older_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    """Weights replaced after export (another guide's bank under the recorded name) are refused by every
    backend that reads the bank, before anything runs; a guided graph recorded without "guide_bank":
    "weights" (exported before the bank left the graphs) is refused with the re-export command."""
    import json

    from safetensors.numpy import load_file, save_file

    from aminet_edge.bundle import BundleError

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("cache"))
    raw = json.loads((copy / "config.json").read_text())
    weights = copy / raw["artifacts"]["weights"]["path"]
    tensors = load_file(str(weights))
    tensors["guide.bank"] = np.ascontiguousarray(tensors["guide.bank"][::-1])  # same size, other order
    save_file(tensors, str(weights))
    for backend in ("onnxruntime", "openvino", "onnxruntime-split", "openvino-split"):
        if backend_status(backend, copy, read_config(copy), "cpu") is not None:
            continue
        with pytest.raises(BundleError, match="sha256 differs"):
            Detector.load(copy, backend=backend)
    shutil.copy2(bundle / raw["artifacts"]["weights"]["path"], weights)
    del raw["artifacts"]["onnx"]["model"]["guide_bank"]
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="older aminet-edge that put the nearest-normal guide's bank inside the "
                                          r"graph.*aminet-edge export"):
        Detector.load(copy, backend="onnxruntime")
    from aminet_edge.bundle import verify_bundle

    assert "older aminet-edge" in verify_bundle(copy)["model.onnx"]


_GRAPHS: dict[str, Path] = {}
HAS_NNCF = importlib.util.find_spec("nncf") is not None


def guided_graphs(factory: pytest.TempPathFactory) -> Path:
    """A copy of the guided bundle with every other graph, exported once per session (CPU fp16 exports are
    slow; test_engine builds its engines from a copy of this one): fp16 (single, split), onnxruntime's
    int8 (model_int8, model_b_int8) and, with nncf, OpenVINO's int8_static (calibrated on other normal
    surfaces)."""
    if "guided" not in _GRAPHS:
        pytest.importorskip("onnxruntime")
        from PIL import Image

        from aminet_edge.export.onnx_export import export_onnx

        root = factory.mktemp("guided-graphs")
        copy = root / "bundle"
        shutil.copytree(shared_bundle(factory, GUIDED, GUIDE_MAP), copy, ignore=shutil.ignore_patterns("cache"))
        normal = root / "normal" / "train" / "good"
        normal.mkdir(parents=True)
        for i, image in enumerate(normal_images(6, seed=13)):
            Image.fromarray(image).save(normal / f"{i:03d}.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings
            export_onnx(copy, "fp16")
            export_onnx(copy, "int8", calibration_data=[root / "normal"] if HAS_NNCF else ())
        _GRAPHS["guided"] = copy
    return _GRAPHS["guided"]


def test_openvino_bf16_keeps_the_guide_float32(bundle: Path) -> None:
    """OpenVINO bf16 (openvino_backend.keep_fp32) marks every guide node of the single graph float32
    (pooling, the bank product, the ArgMin OpenVINO turns into TopK, Gather, norm, the comparison OpenVINO
    names after the mask output) and model_a's pooling of guide_tokens, and no backbone convolution. On a
    CPU with native bf16 the compiled model is read back: the guide nodes it runs in bf16 all the same (every
    one the plugin puts in bf16 where it ignores the marks, as OpenVINO 2026.4 does) are exactly those
    compile_graph reports ignored."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'aminet-edge[openvino]')")
    from aminet_edge.runtime.backends.openvino_backend import KEEP_FP32, compile_graph, cpu_capabilities, keep_fp32

    core = ov.Core()
    for name, kinds in (("model.onnx", {"AvgPool", "MatMul", "TopK", "Gather", "ReduceL2", "Greater"}),
                        ("model_a.onnx", {"AvgPool"})):
        model = core.read_model(str(bundle / name))
        keep_fp32(model)
        ops = [op for op in model.get_ops() if op.get_type_name() not in ("Parameter", "Result", "Constant")]
        guide = [op for op in ops if op.get_friendly_name().startswith("/guide/") or op.get_type_name() in
                 ("TopK", "Greater") or (op.get_type_name() == "AvgPool" and "/extractor/" not in op.get_friendly_name())]
        assert kinds <= {op.get_type_name() for op in guide}, name
        assert [op.get_friendly_name() for op in guide if KEEP_FP32 not in op.get_rt_info()] == [], name
        convs = [op for op in ops if op.get_type_name() == "Convolution"
                 and op.get_friendly_name().startswith("/extractor/")]
        assert convs and not [op for op in convs if KEEP_FP32 in op.get_rt_info()], name
        if "BF16" not in cpu_capabilities(core):
            continue
        compiled, ignored = compile_graph(core, bundle / name, "bf16", None, None)
        in_bf16 = set()  # read back: the original nodes each executed bf16 node runs
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["runtimePrecision"].astype(str) == "bf16":
                in_bf16.update(info["originalLayersNames"].astype(str).split(","))
        names = {op.get_friendly_name() for op in guide if op.get_friendly_name().startswith("/")}
        assert sorted(names & in_bf16) == sorted(names & set(ignored)), name


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return guided_graphs(tmp_path_factory)


def test_every_graph_passes_the_tensorrt_check(exported: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from aminet_edge.export.graph_checks import graph_problems
    from aminet_edge.export.guide_bank import read_guide

    names = sorted(p.name for p in exported.glob("*.onnx"))
    static = ["model_int8_static.onnx"] if HAS_NNCF else []
    assert names == ["model.onnx", "model_a.onnx", "model_a_fp16.onnx", "model_b.onnx", "model_b_fp16.onnx",
                     "model_b_int8.onnx", "model_fp16.onnx", "model_int8.onnx", *static]
    bank = read_guide(exported, read_config(exported)).bank
    for name in names:
        model = onnx.load(str(exported / name))
        if "int8" not in name:  # the int8 graphs are CPU-only (onnxruntime, OpenVINO), never TensorRT's
            assert graph_problems(model) == [], name
        # no precision's graph holds the bank: it lies in the weights file only
        assert not [i.name for i in model.graph.initializer if sorted(i.dims) == sorted(bank.shape)], name


def test_fp16_graphs_run_the_guide_in_float32(exported: Path) -> None:
    """fp16 graphs: every guide node of the single graph reads float32 (the bank input is float32), model_a's
    guide_tokens are float32; the mask the split path makes from them (the reference's nearest distance to
    the weights' bank, > threshold) equals the single fp16 graph's exactly, and differs from fp32's in at
    most 1 token in 16 per image."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    from aminet_edge.export.guide_bank import read_guide
    from aminet_edge.ops import reference

    config = read_config(exported)
    guide = read_guide(exported, config)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported / "model_fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                              *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes = [n for n in model.graph.node if n.name.startswith("/guide/") and n.op_type != "Cast"]
    assert {n.op_type for n in nodes} >= {"AveragePool", "Gemm", "ArgMin", "Gather", "ReduceL2", "Greater"}
    for node in nodes:
        assert {types.get(i) for i in node.input[:2] if i} <= {TensorProto.FLOAT, TensorProto.INT64}, node.name
    x = _inputs(config)
    feeds = {"images": x, "guide_bank": guide.bank32}
    (fp32,) = _session(exported / "model.onnx").run(["mask"], feeds)
    (fp16,) = _session(exported / "model_fp16.onnx").run(["mask"], feeds)
    (tokens,) = _session(exported / "model_a_fp16.onnx").run(["guide_tokens"], {"images": x})
    assert tokens.dtype == np.float32
    split16 = reference.nearest_distance(torch.from_numpy(tokens), torch.from_numpy(guide.bank)) > float(guide.threshold)
    np.testing.assert_array_equal(split16.numpy(), fp16)
    assert (fp16 != fp32).sum(1).max() <= fp32.shape[1] // 16


def test_int8_graphs_keep_the_guide_float32(exported: Path) -> None:
    """Neither int8 graph quantises a guide node (onnxruntime's: no integer op, no DynamicQuantizeLinear
    feeding it; OpenVINO's: no DequantizeLinear feeding it), while both quantise the inpainting branch."""
    onnx = pytest.importorskip("onnx")

    for name, quantised in (("model_int8.onnx", "MatMulInteger"), ("model_int8_static.onnx", "DequantizeLinear")):
        if not (exported / name).is_file():
            assert name == "model_int8_static.onnx" and not HAS_NNCF  # nncf absent: OpenVINO's is not exported
            continue
        graph = onnx.load(str(exported / name)).graph
        producer = {o: n for n in graph.node for o in n.output}
        guide = [n for n in graph.node if n.name.startswith("/guide/")]
        assert "Gemm" in {n.op_type for n in guide}, name
        assert sum(n.op_type == quantised for n in graph.node) > 0, name
        for node in guide:
            assert not node.op_type.endswith("Integer"), node.name
            assert not [i for i in node.input if i in producer and producer[i].op_type in
                        ("DequantizeLinear", "DynamicQuantizeLinear")], (name, node.name)


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "int8"), ("onnxruntime-split", "int8"),
                                                ("openvino", "int8")])
def test_int8_masks_equal_fp32(exported: Path, backend: str, precision: str) -> None:
    """The int8 graphs' token masks equal the fp32 graphs' (and the reference's) on the test inputs;
    scores within the int8 tolerances of test_export_onnx / test_openvino_int8."""
    reason = backend_status(backend, exported, read_config(exported), "cpu")
    if backend == "openvino" and not HAS_NNCF:
        reason = "nncf is not installed (pip install 'aminet-edge[openvino]'): no OpenVINO int8 graph"
    if reason is not None:
        pytest.skip(reason)
    images = inputs_for_agreement()
    with Detector.load(exported, backend=backend, precision=precision, threads=1) as q, \
            Detector.load(exported, backend="onnxruntime", precision="fp32") as f:
        assert q.precision == precision
        got, want = q.predict(images), f.predict(images)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.token_mask, w.token_mask)
        assert g.score == pytest.approx(w.score, rel=0.05)
    masks = np.stack([w.token_mask for w in want])
    assert masks.any() and not masks.all()


def test_info_shows_the_mask(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`aminet-edge info RUN`: the guide's bank size and threshold (config.json's train.guide, equal to the
    weights' own threshold and bank rows), and the bank's size in the weights file; the paper's mask with
    its lambda."""
    from click.testing import CliRunner
    from safetensors.numpy import load_file

    from aminet_edge.cli import main

    weights = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    rows, channels = weights["guide.bank"].shape
    threshold = float(weights["guide.threshold"])
    res = CliRunner().invoke(main, ["info", str(bundle)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.strip().startswith("mask:"))
    assert f"nearest-normal guide: bank {rows} tokens of {rows}, threshold {threshold:.4g}" in line
    assert f"{rows * channels * 2 / 2**20:.1f} MiB float16 bank in the weights file" in line
    adaptive = CliRunner().invoke(main, ["info", str(shared_bundle(tmp_path_factory))])
    assert "  mask: adaptive (clustering, lambda 0.5)" in adaptive.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("ops_backend, cuda_graph", [("reference", False), ("auto", True)])
def test_cuda_torch_backend_agrees(bundle: Path, reference: list[Result], ops_backend: str, cuda_graph: bool) -> None:
    """The guided pipeline on CUDA (frames preprocessed on the device; the guide's product, ArgMin and
    Gather on the GPU; with "auto" the Triton/CUDA score map, captured in a CUDA graph) against the CPU
    reference: identical token masks, maps within test_detector's tolerances."""
    det = Detector.load(bundle, backend="torch", device="cuda", ops_backend=ops_backend, cuda_graph=cuda_graph)
    assert det.backend == "torch"
    for _ in range(2):  # with cuda_graph, the second pass replays the captured graphs
        for got, want in zip(det.predict(inputs_for_agreement()), reference):
            assert_agree(got, want)
    det.close()
