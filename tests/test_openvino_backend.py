"""OpenVINO backends against the fp32 onnxruntime path, their precision marks, cache, options and errors.

The bundle is test_detector's tiny exported bundle. Tolerances, and why:
- fp32 (every CPU): token masks identical and scores within rtol 1e-5: both runtimes run the same fp32
  graph and differ only in reduction order (measured 2-3e-7 relative on the cpu-preset bundle);
- bf16 mixed (CPUs with native bf16 only): the backbone and transformers round to 8 mantissa bits
  (relative error ~4e-3 per op), so at most 0.5 % of the mask's tokens may flip (the issue's accuracy
  bar) and scores move within 5 %; fp32 keeps the mask statistics from adding their own error.
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
from aminet_edge.runtime.backends.openvino_backend import (CACHE_DIR, KEEP_FP32, cpu_capabilities,  # noqa: E402
                                                           keep_fp32)

FP32_RTOL = 1e-5
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


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES)")
@pytest.mark.parametrize("backend", OV_BACKENDS)
def test_bf16_mixed_stays_close_to_fp32(bundle: Path, onnxruntime_fp32: list, backend: str) -> None:  # type: ignore[type-arg]
    _skip_unavailable(bundle, backend)
    with Detector.load(bundle, backend=backend) as det:
        assert det.precision == "bf16"  # the default where the CPU has it
        results = det.predict(generated_images())
    flipped = sum(int((a.token_mask != b.token_mask).sum()) for a, b in zip(results, onnxruntime_fp32))
    assert flipped <= 0.005 * sum(b.token_mask.size for b in onnxruntime_fp32)
    for got, want in zip(results, onnxruntime_fp32):
        assert got.score == pytest.approx(want.score, rel=0.05)


@pytest.mark.skipif(HAS_BF16, reason="this CPU has native bf16")
def test_bf16_without_native_bf16_is_refused(bundle: Path) -> None:
    _skip_unavailable(bundle, "openvino")
    with pytest.raises(BackendUnavailableError, match="no native bf16"):
        Detector.load(bundle, backend="openvino", precision="bf16")
    with Detector.load(bundle, backend="openvino") as det:
        assert det.precision == "fp32"  # the default falls back to fp32, and says so
        assert "fp32" in det.backend_description


def test_precision_marks_cover_mask_and_score_map_only(bundle: Path) -> None:
    model = ov.Core().read_model(str(bundle / "model.onnx"))
    assert keep_fp32(model) > 0
    marked = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops() if KEEP_FP32 in op.get_rt_info()}
    types = set(marked.values())
    # the adaptive mask (distances, norms, nearest centre, one-hot statistics, comparison) and the score map
    # (upsampling, Gaussian blur as a convolution, map std) are all there
    assert {"ReduceL2", "OneHot", "Greater", "Sqrt", "Interpolate", "Convolution", "ReduceMean"} <= types
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
