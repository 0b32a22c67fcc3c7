"""OpenVINO backends against the fp32 onnxruntime path, their precision marks, cache, options and errors.

The bundle is test_detector's tiny exported bundle. Tolerances, and why:
- fp32 (every CPU): token masks identical and scores within rtol 1e-5: both runtimes run the same fp32
  graph and differ only in reduction order (measured 2-3e-7 relative on the cpu-preset bundle);
- default precision: fp32 unless the CPU has native bf16 AND the compiled graphs keep every node marked
  float32 (read back from the runtime model); OpenVINO 2026.4 ignores the marks under bf16 (its runtime
  model is the same with and without them), so there the default is fp32 and agrees like fp32;
- explicit bf16 (CPUs with native bf16 only): the backend reports exactly the marked nodes the runtime
  model runs in bf16. Against onnxruntime fp32 on this bundle (16 tokens per image, random weights),
  measured with the marks ignored (OpenVINO 2026.4.1, AVX512_BF16): 6 of 96 mask tokens flipped in both
  backends (the split's C++ mask reads model_a's bf16 features), scores 1.4 % off (single graph) and
  0.09 % (split), maps 0.95 % of their maximum (single) and 0.06 % (split). Bounds, about 1.5-4x the
  measured: <= 10 % of tokens flipped, scores within 5 %, maps within 5 % of the maximum. bf16 keeps 8
  mantissa bits (~0.4 % per op), so it never meets the fp32 tolerances.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch
ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'aminet-edge[openvino]')")

from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import BundleError, make_record, read_config, write_config  # noqa: E402
from aminet_edge.runtime import BackendUnavailableError, Detector  # noqa: E402
from aminet_edge.runtime.backends import backend_status  # noqa: E402
from aminet_edge.runtime.backends.openvino_backend import (CACHE_DIR, KEEP_FP32, compile_graph,  # noqa: E402
                                                           cpu_capabilities, keep_fp32)

FP32_RTOL = 1e-5
BF16_FLIPPED, BF16_RTOL = 0.10, 0.05  # measured 6.3 % of tokens, scores 1.4 %, maps 0.95 % (docstring)
HAS_BF16 = "BF16" in cpu_capabilities()
OV_BACKENDS = ["openvino", "openvino-split"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


def _skip_unavailable(bundle: Path, backend: str) -> None:
    reason = backend_status(backend, bundle, read_config(bundle), "cpu")
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def onnxruntime_fp32(bundle: Path) -> list:  # type: ignore[type-arg]
    with Detector.load(bundle, backend="onnxruntime", precision="fp32") as det:
        return det.predict(generated_images())  # type: ignore[return-value]


@pytest.mark.parametrize("backend", OV_BACKENDS)
def test_fp32_equals_onnxruntime_fp32(bundle: Path, onnxruntime_fp32: list, backend: str) -> None:  # type: ignore[type-arg]
    _skip_unavailable(bundle, backend)
    with Detector.load(bundle, backend=backend, precision="fp32", threads=1) as det:
        assert (det.backend, det.precision) == (backend, "fp32")
        for got, want in zip(det.predict(generated_images()), onnxruntime_fp32):
            np.testing.assert_array_equal(got.token_mask, want.token_mask)
            assert got.score == pytest.approx(want.score, rel=FP32_RTOL)
            np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=FP32_RTOL,
                                       atol=FP32_RTOL * float(want.anomaly_map.max()))


def _runtime_precisions(compiled) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Original node name -> the precision the compiled model runs it in (read back, fused nodes split)."""
    out = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        for name in info["originalLayersNames"].astype(str).split(","):
            out[name] = info["runtimePrecision"].astype(str)
    return out


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES)")
@pytest.mark.parametrize("backend", OV_BACKENDS)
def test_bf16_reports_what_runs_in_bf16(bundle: Path, onnxruntime_fp32: list, backend: str) -> None:  # type: ignore[type-arg]
    """Explicit bf16: `ignored` is exactly the marked nodes the runtime models run in bf16 (read back here
    on its own), the description says so, and the results stay within the measured bf16 bounds."""
    _skip_unavailable(bundle, backend)
    core = ov.Core()
    with Detector.load(bundle, backend=backend, precision="bf16", cache=False) as det:
        assert det.precision == "bf16"
        ignored, description = det._backend.ignored, det.backend_description
        results = det.predict(generated_images())
        paths = det._backend.paths
    want = []
    for path in paths:
        model = core.read_model(str(path))
        marked = set(keep_fp32(model))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        want += [n for n, p in _runtime_precisions(compiled).items() if n in marked and p == "bf16"]
    # the exported graph's names; OpenVINO names the nodes it makes (MVN_123) anew at every read
    assert [n for n in ignored if n.startswith("/")] == sorted(n for n in want if n.startswith("/"))
    assert len(ignored) == len(want)
    if ignored:  # the plugin ignored the marks: the description says so, and names some
        assert "the float32 marks were ignored" in description and ignored[0] in description
    else:
        assert "mask + score map fp32" in description or "C++ kernels fp32" in description
    flipped = sum(int((a.token_mask != b.token_mask).sum()) for a, b in zip(results, onnxruntime_fp32))
    assert flipped <= BF16_FLIPPED * sum(b.token_mask.size for b in onnxruntime_fp32)
    for got, want_result in zip(results, onnxruntime_fp32):
        assert got.score == pytest.approx(want_result.score, rel=BF16_RTOL)
        np.testing.assert_allclose(got.anomaly_map, want_result.anomaly_map, rtol=0,
                                   atol=BF16_RTOL * float(want_result.anomaly_map.max()))


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES)")
def test_bf16_marks_read_back(bundle: Path) -> None:
    """compile_graph's read-back against the runtime model compiled without marks: when the marks change
    nothing (OpenVINO 2026.4), every marked node the plugin runs in bf16 is reported ignored, the score
    map's smoothing (one of its MatMuls) among them; when they are honoured, no marked node runs in bf16."""
    core = ov.Core()
    compiled, ignored = compile_graph(core, bundle / "model.onnx", "bf16", None, None)
    marked = keep_fp32(core.read_model(str(bundle / "model.onnx")))
    with_marks = _runtime_precisions(compiled)
    without = _runtime_precisions(core.compile_model(core.read_model(str(bundle / "model.onnx")), "CPU",
                                                     {"INFERENCE_PRECISION_HINT": "bf16"}))
    exported = [n for n in marked if n.startswith("/")]  # names of the exported graph (stable across reads)
    assert [n for n in ignored if n.startswith("/")] == sorted(n for n in exported if with_marks.get(n) == "bf16")
    if all(with_marks.get(n) == without.get(n) for n in exported):  # the marks had no effect
        smoothing = [n for n in exported if n.startswith("/MatMul")]  # the score map's A_h @ M @ A_w.T
        assert any(n in ignored and with_marks[n] == "bf16" for n in smoothing)
    assert compile_graph(core, bundle / "model.onnx", "fp32", None, None)[1] == []


@pytest.mark.parametrize("backend", OV_BACKENDS)
def test_default_is_fp32(bundle: Path, onnxruntime_fp32: list, backend: str) -> None:  # type: ignore[type-arg]
    """The default precision is fp32 on every CPU, bf16 ones included, with fp32's results."""
    _skip_unavailable(bundle, backend)
    with Detector.load(bundle, backend=backend, cache=False) as det:
        assert det.precision == "fp32" and det._backend.ignored == []
        results = det.predict(generated_images())
    for got, want in zip(results, onnxruntime_fp32):
        np.testing.assert_array_equal(got.token_mask, want.token_mask)
        assert got.score == pytest.approx(want.score, rel=FP32_RTOL)


@pytest.mark.skipif(HAS_BF16, reason="this CPU has native bf16")
def test_bf16_without_native_bf16_is_refused(bundle: Path) -> None:
    _skip_unavailable(bundle, "openvino")
    with pytest.raises(BackendUnavailableError, match="no native bf16"):
        Detector.load(bundle, backend="openvino", precision="bf16")
    with Detector.load(bundle, backend="openvino") as det:
        assert det.precision == "fp32" and "fp32" in det.backend_description


@pytest.mark.parametrize("capabilities", [["FP32", "INT8", "BIN", "EXPORT_IMPORT"],
                                          ["FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT"]])
def test_default_precision_and_cache_from_the_capability_list(bundle: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capabilities: list[str]) -> None:
    """Whatever the CPU (its capability list given, so that both kinds run on any CPU): the default is fp32,
    compiled with an f32 inference hint and cached in the bundle; bf16 is refused without "BF16"."""
    from aminet_edge.runtime.backends import openvino_backend

    _skip_unavailable(bundle, "openvino")
    assert openvino_backend.resolve_precision(None, capabilities) == "fp32"
    assert openvino_backend.resolve_precision("int8", capabilities) == "int8"
    if "BF16" in capabilities:
        assert openvino_backend.resolve_precision("bf16", capabilities) == "bf16"
    else:
        with pytest.raises(BackendUnavailableError, match="no native bf16"):
            openvino_backend.resolve_precision("bf16", capabilities)
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: list(capabilities))
    copy = Path(shutil.copytree(bundle, tmp_path / "b", ignore=shutil.ignore_patterns("cache")))
    with Detector.load(copy, backend="openvino") as det:
        assert det.precision == "fp32" and f"cache {copy / CACHE_DIR}" in det.backend_description
        (compiled,) = det._backend.compiled  # type: ignore[attr-defined]
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert sorted((copy / CACHE_DIR).glob("*.blob")), "no compiled model was cached"


def test_precision_marks_cover_mask_and_score_map_only(bundle: Path) -> None:
    model = ov.Core().read_model(str(bundle / "model.onnx"))
    names = keep_fp32(model)
    marked = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops() if KEEP_FP32 in op.get_rt_info()}
    assert names and sorted(names) == sorted(marked)  # returns exactly the marked nodes
    types = set(marked.values())
    # the adaptive mask (distances, norms, nearest centre, one-hot statistics, comparison) and the score map
    # (upsampling and Gaussian blur as two MatMuls, map std) are all there
    assert {"ReduceL2", "OneHot", "Greater", "Sqrt", "MatMul", "ReduceMean"} <= types
    heavy = [op for op in model.get_ops() if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution")]
    in_modules = [op.get_friendly_name() for op in heavy if op.get_friendly_name().startswith(("/extractor/",
                                                                                              "/blocks."))]
    assert in_modules and not [n for n in in_modules if n in marked]  # backbone + transformers run bf16


def _rerecord(bundle: Path, key: str) -> None:
    """Record graph `key`'s file as it is now (what `aminet-edge export` does after writing it)."""
    config = read_config(bundle)
    record = config.artifacts["onnx"][key]
    record.update(make_record(bundle, bundle / record["path"]))
    write_config(bundle, config)


def test_compiled_model_is_cached_and_a_stale_cache_is_harmless(bundle: Path, tmp_path: Path) -> None:
    _skip_unavailable(bundle, "openvino")
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("cache"))
    image = generated_images()[1]
    with Detector.load(copy, backend="openvino") as det:
        first = det.predict(image)
    blobs = sorted((copy / CACHE_DIR).glob("*.blob"))
    assert blobs, "no compiled model was cached"
    with Detector.load(copy, backend="openvino") as det:  # loads from the cache
        assert det.predict(image).score == first.score
    assert sorted((copy / CACHE_DIR).glob("*.blob")) == blobs  # reused, not compiled again
    for blob in blobs:  # a damaged blob: OpenVINO compiles afresh, results unchanged
        blob.write_bytes(b"not a compiled model")
    (copy / CACHE_DIR / "0123456789.blob").write_bytes(b"stale")  # a foreign blob is ignored
    with Detector.load(copy, backend="openvino") as det:
        assert det.predict(image).score == first.score
    import onnx

    graph = onnx.load(str(copy / "model.onnx"))  # a re-exported graph (other weights) at the same path
    head = next(n for n in graph.graph.node if n.op_type == "ConvTranspose").input[1]
    weight = next(i for i in graph.graph.initializer if i.name == head)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.5, head))
    onnx.save(graph, str(copy / "model.onnx"))
    with pytest.raises(BundleError, match="sha256 differs"):  # an edited graph is refused by its checksum
        Detector.load(copy, backend="openvino")
    _rerecord(copy, "model")  # as a re-export records it
    with Detector.load(copy, backend="openvino") as det, \
            Detector.load(copy, backend="onnxruntime", precision="fp32") as ort:
        changed = det.predict(image)
        assert changed.score != first.score  # not the stale compiled model
        assert changed.score == pytest.approx(ort.predict(image).score, rel=FP32_RTOL)
    nocache = tmp_path / "nocache"
    shutil.copytree(bundle, nocache, ignore=shutil.ignore_patterns("cache"))
    with Detector.load(nocache, backend="openvino", cache=False) as det:
        assert det.predict(image).score == first.score and "no cache" in det.backend_description
    assert not (nocache / CACHE_DIR).exists()


def test_options_and_errors(bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _skip_unavailable(bundle, "openvino")
    with pytest.raises(ValueError, match="openvino precision must be one of"):
        Detector.load(bundle, backend="openvino", precision="fp16")
    with pytest.raises(TypeError, match="unknown option"):
        Detector.load(bundle, backend="openvino", spinning=True)
    config = read_config(bundle)
    assert "CPU only" in str(backend_status("openvino", bundle, config, "cuda"))
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("cache"))
    (broken / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="graph is 8 bytes"):  # the checksum record catches it first
        Detector.load(broken, backend="openvino")
    _rerecord(broken, "model")  # recorded as it is (a broken exporter): OpenVINO's own error
    with pytest.raises(Exception, match="OpenVINO cannot read this graph"):
        Detector.load(broken, backend="openvino")
    import aminet_edge.runtime.backends as registry

    real = registry.has_module
    monkeypatch.setattr(registry, "has_module", lambda name: name != "openvino" and real(name))
    assert "aminet-edge[openvino]" in str(backend_status("openvino", bundle, config, "cpu"))


@pytest.mark.parametrize("kind, first, why", [("bf16", "openvino", "has native bf16"),
                                              ("vnni", "onnxruntime", "has VNNI but no bf16"),
                                              ("plain", "openvino", "neither bf16 nor VNNI")])
def test_auto_order_follows_the_cpu(bundle: Path, monkeypatch: pytest.MonkeyPatch, kind: str, first: str,
                                    why: str) -> None:
    import aminet_edge.runtime.backends as registry

    flags = {"bf16": {"avx512f", "avx512_bf16", "amx_bf16"}, "vnni": {"avx512f", "avx512_vnni"}, "plain": {"avx2"}}
    monkeypatch.setattr(registry, "cpu_flags", lambda: frozenset(flags[kind]))
    config = read_config(bundle)
    assert registry.auto_order("cpu", config)[0] == first
    assert why in registry.auto_reason("cpu", config)
