"""Detector: every CPU backend against the torch reference, result fields, thresholds, determinism, CLI.

The bundle is tiny (64 px, D = 32, random weights, pretrained=False backbone) and built once per session
by `shared_bundle` (the other runtime test modules import it). Tolerances, and why:
- token masks identical: the adaptive mask is a comparison; fp32 backends agree on these inputs;
- maps within rtol 1e-4 and atol 1e-4 * the map's maximum: fp32 backends differ only by reduction order
  (conv / GEMM blocking, the C++ separable smoothing vs the reference's conv1d), ~1e-6 relative;
- pixel masks identical except where the map lies within that atol of the pixel threshold.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aminet_edge.bundle import (SCHEMA_VERSION, BundleConfig, BundleError, Calibration,  # noqa: E402
                                read_config, write_config)
from aminet_edge.config import ModelConfig, ScoreConfig  # noqa: E402
from aminet_edge.runtime import (BackendUnavailableError, Detector, EngineError, InputError,  # noqa: E402
                                 Result, sensitivity_factor)
from aminet_edge.runtime.backends import backend_status  # noqa: E402

TINY = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=2,
                   num_clusters=4)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = [SHARED / "mvtec_bottle/test/good/000.png", SHARED / "mvtec_bottle/test/broken_large/000.png",
        SHARED / "magnetic_tile/test/crack/000.png", SHARED / "magnetic_tile/test/good/000.png"]
RTOL = 1e-4
CPU_BACKENDS = ["torch", "onnxruntime", "onnxruntime-split", "openvino", "openvino-split"]

_BUNDLE: dict[tuple[str, str], Path] = {}
GUIDE_MAP = "reconstruction+guide"
# (test-time mask, score map) of the bundles the GPU and simulated-TensorRT tests run
MASK_MAPS = [("adaptive", "reconstruction"), ("nearest_normal", "reconstruction"), ("nearest_normal", GUIDE_MAP)]


# ---- the shared bundle --------------------------------------------------------------------------
def generated_images(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Textured surfaces of assorted sizes and dtypes, some with a bright scratch (uint8 RGB mostly)."""
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (100, 150), (150, 90), (48, 200), (256, 256), (73, 61)]
    out = []
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = 0.5 + 0.2 * np.sin(xx / (3 + i)) * np.cos(yy / 5)
        img = np.clip(base[..., None] + rng.normal(0, 0.05, (h, w, 3)), 0, 1)
        if i % 2:
            img[h // 3:h // 3 + max(h // 10, 2), w // 4:3 * w // 4] = (1.0, 0.2, 0.1)
        out.append((img * 255).astype(np.uint8))
    return out


def normal_images(n: int, seed: int) -> list[np.ndarray]:
    """`n` generated surfaces without a scratch (the even ones of generated_images)."""
    return generated_images(2 * n, seed)[::2]


def _preprocessed(images: list[np.ndarray], config: BundleConfig) -> torch.Tensor:
    from aminet_edge.data.images import preprocess

    size = config.model.image_size
    return torch.from_numpy(np.stack([preprocess(i.astype(np.float32) / 255, size, config.mean, config.std)
                                      for i in images]))


def _guide(extractor, config: BundleConfig):  # type: ignore[no-untyped-def]
    """The nearest-normal guide built as training builds it (aminet_edge.training.guide.build_guide, its
    summary in config.train["guide"]): bank from 8 scratch-free generated surfaces, threshold from 4
    others (not the images compared in tests)."""
    from aminet_edge.training.guide import build_guide, pooled_tokens

    with torch.no_grad():
        fit, held = (pooled_tokens([extractor(_preprocessed(normal_images(n, seed), config))],
                                   config.model.patch_size) for n, seed in ((8, 11), (4, 12)))
    guide, config.train["guide"] = build_guide(fit, held, config.model)
    return guide


def make_bundle(path: Path, mask: str = "adaptive", score_map: str = "reconstruction") -> Path:
    """A tiny exported bundle with calibration (normal and F1 thresholds) at `path`; with mask
    "nearest_normal" its test-time mask is a nearest-normal guide (`_guide`); with score_map
    "reconstruction+guide" the guide's distances are added to the map, weighted so that both terms have the
    same mean on the generated images."""
    import warnings

    from aminet_edge.model.pipeline import build_modules, load_pipeline, save_bundle

    torch.manual_seed(0)
    # guide_dims 0: the backends' tests search the bank in the backbone's channels (the projection:
    # tests/test_guide.py::test_set_mask_projects_the_guide)
    config = BundleConfig(model=dataclasses.replace(TINY, mask=mask, guide_dims=0), in_channels=0,
                          score=ScoreConfig(map="reconstruction"),
                          mean=(0.5,) * 3, std=(0.5,) * 3)
    from aminet_edge.model.features import build_feature_extractor

    extractor = build_feature_extractor(TINY.backbone, image_size=TINY.image_size, pretrained=False)
    config.in_channels, config.mean, config.std = extractor.channels, extractor.mean, extractor.std
    extractor, aminet = build_modules(config)
    path.mkdir(parents=True, exist_ok=True)
    save_bundle(path, config, extractor, aminet, _guide(extractor.eval(), config) if mask == "nearest_normal" else None)
    pipeline, _ = load_pipeline(path)
    batch = _preprocessed(generated_images(), config)
    if score_map != "reconstruction":
        from aminet_edge.model.pipeline import token_map
        from aminet_edge.ops import reference

        with torch.no_grad():
            feat, recon, _, dist = pipeline.restore(batch)
        size = (TINY.image_size, TINY.image_size)
        guide = reference.upsample_smooth(token_map(ScoreConfig(map=score_map), dist, TINY.grid_size), size, 4.0)
        weight = float(reference.score_map(feat, recon, size)[0].mean() / guide.mean())
        config.score = pipeline.score = ScoreConfig(map=score_map, guide_weight=weight)
    # thresholds between the generated images' scores, so that some are flagged and some not
    with torch.no_grad():
        amap, score, _ = pipeline(batch)
    image_thr = float(np.median(score.numpy()))
    pixel_thr = float(np.median(amap.numpy()))
    config.calibration = Calibration(image_threshold=image_thr, pixel_threshold=pixel_thr,
                                     normal_image_scores={"mean": float(score.mean()), "n": 6},
                                     f1_image_threshold=0.8 * image_thr, f1_pixel_threshold=0.8 * pixel_thr)
    write_config(path, config)
    import importlib.util

    if importlib.util.find_spec("onnx") is None:  # a bare GPU machine (bench/gpu_check.py): the onnxruntime
        return path  # backends then skip for want of graphs; the torch backend needs none
    from aminet_edge.export.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        export_onnx(path)  # model.onnx, model_a.onnx, model_b.onnx, recorded in config.json
    return path


def shared_bundle(tmp_path_factory: pytest.TempPathFactory, mask: str = "adaptive",
                  score_map: str = "reconstruction") -> Path:
    """The session's bundle of test-time `mask` and `score_map`, built on first use (shared by the runtime
    test modules)."""
    if (mask, score_map) not in _BUNDLE:
        _BUNDLE[mask, score_map] = make_bundle(tmp_path_factory.mktemp("runtime") / "bundle", mask, score_map)
    return _BUNDLE[mask, score_map]


def available_cpu_backends(bundle: Path) -> list[str]:
    from aminet_edge.runtime.backends import auto_order

    config = read_config(bundle)
    return [b for b in auto_order("cpu", config) if backend_status(b, bundle, config, "cpu") is None]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


_DETECTORS: dict[tuple[str, str], Detector] = {}


def detector(bundle: Path, backend: str, **kwargs) -> Detector:  # type: ignore[no-untyped-def]
    key = (str(bundle), backend + repr(sorted(kwargs.items())))
    if key not in _DETECTORS:
        _DETECTORS[key] = Detector.load(bundle, backend=backend, **kwargs)
    return _DETECTORS[key]


def inputs_for_agreement() -> list:  # type: ignore[type-arg]
    items: list = generated_images()  # type: ignore[type-arg]
    items += [str(p) for p in REAL if p.is_file()]
    return items


@pytest.fixture(scope="module")
def reference(bundle: Path) -> list[Result]:
    """Predictions of the torch backend with the pure-PyTorch reference ops: the truth."""
    return detector(bundle, "torch", ops_backend="reference").predict(inputs_for_agreement())  # type: ignore[return-value]


def assert_agree(got: Result, want: Result) -> None:
    assert got.ok and want.ok
    assert got.anomaly_map.shape == want.anomaly_map.shape
    np.testing.assert_array_equal(got.token_mask, want.token_mask)
    atol = RTOL * float(want.anomaly_map.max())
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=RTOL, atol=atol)
    assert got.score == pytest.approx(want.score, rel=RTOL)
    near = np.abs(want.anomaly_map - want.thresholds.pixel) <= atol + RTOL * want.thresholds.pixel
    np.testing.assert_array_equal(got.mask[~near], want.mask[~near])
    if abs(want.normalized_score - 1.0) > 1e-3:
        assert got.is_anomaly == want.is_anomaly


# ---- backends -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_agrees_with_torch_reference(bundle: Path, reference: list[Result], backend: str) -> None:
    reason = backend_status(backend, bundle, read_config(bundle), "cpu")
    if reason is not None:
        pytest.skip(reason)
    det = detector(bundle, backend)
    assert det.backend == backend
    results = det.predict(inputs_for_agreement())
    assert isinstance(results, list) and len(results) == len(reference)
    for got, want in zip(results, reference):
        assert_agree(got, want)
    assert {r.is_anomaly for r in reference} == {True, False}  # the thresholds split the inputs


def test_real_images_are_covered(reference: list[Result]) -> None:
    real = [r for r in reference if r.source.endswith(".png")]
    if not real:
        pytest.skip(f"real images absent under {SHARED}")
    for r in real:  # map at each file's own resolution (bottle 384x384, tiles ~200x300 grey)
        from PIL import Image

        with Image.open(r.source) as im:
            assert r.anomaly_map.shape == (im.height, im.width)


BOTTLE = [SHARED / "mvtec_bottle/test/good/000.png", SHARED / "mvtec_bottle/test/broken_large/000.png",
          SHARED / "mvtec_bottle/test/contamination/000.png"]


@pytest.mark.slow  # ~20 s: exports a 128 px model
def test_real_bottle_images_agree_at_tiny_preset(tmp_path: Path) -> None:
    """Preset "tiny" (128 px, D = 128, random weights): every CPU backend matches the reference on 3 bottles."""
    if not all(p.is_file() for p in BOTTLE):
        pytest.skip(f"real images absent under {SHARED / 'mvtec_bottle'}")
    import warnings

    from aminet_edge.config import PRESETS
    from aminet_edge.data.images import read_image
    from aminet_edge.export.onnx_export import export_onnx
    from aminet_edge.model.features import build_feature_extractor
    from aminet_edge.model.pipeline import build_modules, save_bundle

    torch.manual_seed(1)
    model = dataclasses.replace(PRESETS["tiny"], mask="adaptive")
    probe = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=False)
    config = BundleConfig(model=model, in_channels=probe.channels, score=ScoreConfig(map="reconstruction"),
                          mean=probe.mean, std=probe.std,
                          calibration=Calibration(image_threshold=1.0, pixel_threshold=1.0))
    extractor, aminet = build_modules(config)
    path = tmp_path / "tiny"
    path.mkdir()
    save_bundle(path, config, extractor, aminet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(path)
    files = [str(p) for p in BOTTLE]
    want = Detector.load(path, backend="torch", ops_backend="reference").predict(files)
    for backend in CPU_BACKENDS:
        if backend_status(backend, path, read_config(path), "cpu") is not None:
            continue
        got = Detector.load(path, backend=backend).predict(files)
        for g, w in zip(got, want):
            assert g.anomaly_map.shape == w.anomaly_map.shape == read_image(g.source).shape[:2]
            assert_agree(g, w)


def test_int8_graph_is_the_default_once_exported(bundle: Path, tmp_path: Path) -> None:
    """onnxruntime backends: fp32 unless `export --precision int8` ran; then int8 unless precision="fp32"."""
    pytest.importorskip("onnxruntime")
    from aminet_edge.export.onnx_export import export_onnx

    with pytest.raises(BundleError, match=r"model_int8\.onnx not found: export it with .*--precision int8"):
        Detector.load(bundle, backend="onnxruntime", precision="int8")
    copy = tmp_path / "int8"
    shutil.copytree(bundle, copy)
    export_onnx(copy, "int8")
    frames = generated_images()[:3]
    for backend in available_cpu_backends(copy):
        if not backend.startswith("onnxruntime"):  # the int8 graphs are onnxruntime's (quantize.py)
            continue
        fp32 = Detector.load(copy, backend=backend, precision="fp32")
        int8 = Detector.load(copy, backend=backend)
        assert "int8" in int8.backend_description and "int8" not in fp32.backend_description
        assert (int8.precision, fp32.precision) == ("int8", "fp32")
        batched = int8.predict(frames)
        for i, (q, f) in enumerate(zip(batched, fp32.predict(frames))):
            assert np.array_equal(q.token_mask, f.token_mask)
            assert q.score == pytest.approx(f.score, rel=0.05)
            alone = int8.predict(frames[i])  # per-tensor int8 scales: the batch must not change a result
            assert alone.score == q.score and np.array_equal(alone.anomaly_map, q.anomaly_map), backend
    with pytest.raises(ValueError, match="precision must be one of"):
        Detector.load(copy, backend="onnxruntime", precision="int4")


def test_auto_table_picks_the_first_available_and_says_why(bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """AMINET_AUTO=table: the CPU-flag table's order (the measured choice: tests/test_auto_backend.py)."""
    from aminet_edge.runtime.backends import SPLIT_MIN_CHANNELS, auto_order, cpu_kind

    monkeypatch.setenv("AMINET_AUTO", "table")
    config = read_config(bundle)
    available = available_cpu_backends(bundle)
    det = Detector.load(bundle)
    # EfficientNet-Lite features: single graph first; OpenVINO first unless the CPU has VNNI but no bf16
    first = "onnxruntime" if cpu_kind() == "vnni" or "openvino" not in available else "openvino"
    assert det.backend == available[0] == first
    assert det.backend_reason.startswith("auto") and cpu_kind() in ("bf16", "vnni", "plain")
    wide = BundleConfig(**{**config.__dict__, "in_channels": SPLIT_MIN_CHANNELS})
    assert auto_order("cpu", wide)[0].endswith("-split")  # WideResNet features: split graphs first
    assert auto_order("cuda", config)[0] == "tensorrt"
    partial = tmp_path / "no_single"
    shutil.copytree(bundle, partial)
    (partial / "model.onnx").unlink()
    det = Detector.load(partial)
    assert det.backend == [b for b in available if b not in ("onnxruntime", "openvino")][0]
    assert f"skipped {first}:" in det.backend_reason and "model.onnx not found" in det.backend_reason


# ---- result fields and thresholds -----------------------------------------------------------------
def test_result_fields(bundle: Path) -> None:
    det = detector(bundle, "onnxruntime")
    image = generated_images()[1]  # 100 x 150
    r = det.predict(image)
    assert isinstance(r, Result) and r.ok and r.error is None and r.source == "input"
    assert r.anomaly_map.shape == (100, 150) and r.anomaly_map.dtype == np.float32
    assert r.mask.shape == (100, 150) and r.mask.dtype == bool
    np.testing.assert_array_equal(r.mask, r.anomaly_map > r.thresholds.pixel)
    assert r.token_mask.shape == (TINY.grid_size, TINY.grid_size) and r.token_mask.dtype == bool
    assert r.normalized_score == pytest.approx(r.score / r.thresholds.image)
    assert r.is_anomaly == (r.score > r.thresholds.image) == (r.normalized_score > 1.0)
    assert r.timing.backend_ms > 0 and r.timing.batch_size == 1 and r.backend == "onnxruntime"
    record = r.to_dict()
    assert json.loads(json.dumps(record))["is_anomaly"] == r.is_anomaly
    cal = read_config(bundle).calibration
    assert r.thresholds.image == pytest.approx(cal.image_threshold) and r.thresholds.source == "normal"


def test_thresholds_and_sensitivity(bundle: Path) -> None:
    cal = read_config(bundle).calibration
    det = detector(bundle, "onnxruntime")
    image = generated_images()[3]
    base = det.predict(image)
    assert sensitivity_factor(0.0) == 2.0 and sensitivity_factor(0.5) == 1.0 and sensitivity_factor(1.0) == 0.5
    assert sensitivity_factor(0.75) == pytest.approx(2 ** -0.5)
    high = det.predict(image, sensitivity=1.0)
    assert high.thresholds.image == pytest.approx(cal.image_threshold / 2)
    assert high.thresholds.pixel == pytest.approx(cal.pixel_threshold / 2)
    assert high.score == base.score and high.normalized_score == pytest.approx(2 * base.normalized_score)
    assert high.mask.sum() >= base.mask.sum()
    f1 = det.predict(image, threshold="f1")
    assert f1.thresholds.image == pytest.approx(cal.f1_image_threshold) and f1.thresholds.source == "f1"
    raw = det.predict(image, threshold=base.score * 2)
    assert not raw.is_anomaly and raw.normalized_score == pytest.approx(0.5)
    assert raw.thresholds.pixel == pytest.approx(cal.pixel_threshold) and raw.thresholds.source == "user"
    assert det.predict(image, pixel_threshold=0.0 + 1e-30).mask.all()
    assert det.predict(image).thresholds == base.thresholds  # per-call overrides do not stick
    loaded = Detector.load(bundle, backend="onnxruntime", threshold="f1", sensitivity=0.25)
    assert loaded.thresholds.image == pytest.approx(cal.f1_image_threshold * 2 ** 0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sensitivity"):
            det.predict(image, sensitivity=bad)
    with pytest.raises(ValueError, match="threshold"):
        det.predict(image, threshold="best")
    with pytest.raises(ValueError, match="> 0"):
        det.predict(image, threshold=-1.0)


def test_threshold_equal_to_the_score_is_not_anomalous(bundle: Path) -> None:
    """The decision is `score > threshold`: on the threshold exactly, normal, normalized_score 1.0; the same
    for pixels at the map's maximum."""
    det = detector(bundle, "onnxruntime")
    base = det.predict(generated_images()[1])
    on = det.predict(generated_images()[1], threshold=base.score, pixel_threshold=float(base.anomaly_map.max()))
    assert on.score == base.score and on.normalized_score == 1.0 and on.is_anomaly is False
    assert not on.mask.any()
    below = det.predict(generated_images()[1], threshold=float(np.nextafter(base.score, 0)))
    assert below.is_anomaly is True and below.normalized_score > 1.0


@pytest.mark.parametrize("src, dst", [((16, 16), (100, 150)), ((64, 64), (73, 91)), ((5, 7), (5, 29))])
def test_resize_map_matches_pil_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    """Enlarging, resize_map is PIL's BILINEAR on float32 ("F" mode): an independent implementation."""
    from aminet_edge.data.images import resize_plane
    from aminet_edge.runtime.detector import resize_map

    amap = np.random.default_rng(0).random(src, dtype=np.float32) * 3.0
    got = resize_map(amap, *dst)
    assert got.shape == dst and got.dtype == np.float32
    np.testing.assert_allclose(got, resize_plane(amap, dst), rtol=1e-5, atol=1e-6)


def test_missing_f1_and_calibration_are_explained(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    config = read_config(copy)
    config.calibration = Calibration(image_threshold=1.0, pixel_threshold=1.0)
    write_config(copy, config)
    with pytest.raises(BundleError, match="F1"):
        Detector.load(copy, backend="onnxruntime", threshold="f1")
    config.calibration = None
    write_config(copy, config)
    with pytest.raises(BundleError, match="no calibration"):
        Detector.load(copy, backend="onnxruntime")
    with Detector.load(copy, backend="onnxruntime", threshold=0.01, pixel_threshold=0.01) as det:
        assert det.predict(generated_images()[0]).thresholds.image == 0.01
    with pytest.raises(RuntimeError, match="closed"):
        det.predict(generated_images()[0])


# ---- determinism and batching ---------------------------------------------------------------------
def assert_identical(a: Result, b: Result) -> None:
    assert a.score == b.score and a.is_anomaly == b.is_anomaly
    assert np.array_equal(a.anomaly_map, b.anomaly_map) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.token_mask, b.token_mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_results_are_bit_identical_across_calls(bundle: Path, backend: str) -> None:
    reason = backend_status(backend, bundle, read_config(bundle), "cpu")
    if reason is not None:
        pytest.skip(reason)
    det = detector(bundle, backend)
    images = generated_images()
    first = det.predict(images)
    again = det.predict(images)
    for a, b in zip(first, again):
        assert_identical(a, b)
    assert_identical(det.predict(images[2]), det.predict(images[2]))
    for a, b in zip(det.predict_batch(images, batch_size=3), det.predict_batch(images, batch_size=3)):
        assert_identical(a, b)


def test_predict_batch_matches_predict(bundle: Path) -> None:
    det = detector(bundle, "onnxruntime")
    images = generated_images()
    listed = det.predict(images)
    batched = det.predict_batch(iter(images), batch_size=det.batch_size)  # any iterable
    for a, b in zip(listed, batched):
        assert_identical(a, b)
    for a, b in zip(listed, det.predict_batch(images, batch_size=2)):  # other batch: fp32 rounding only
        assert_agree(a, b)
    single = det.predict(images[0])
    assert_agree(single, listed[0])
    assert [r.index for r in batched] == list(range(len(images)))


def test_input_forms_give_the_same_result(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    det = detector(bundle, "onnxruntime")
    rgb = generated_images()[1]
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    want = det.predict(rgb)
    assert_identical(det.predict(str(path)), want)
    assert_identical(det.predict(path), want)
    assert_identical(det.predict(Image.fromarray(rgb)), want)
    assert_identical(det.predict(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True), want)
    bgra = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert_identical(det.predict(bgra, bgr=True), want)
    assert_identical(det.predict(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()), want)
    as_float = det.predict(rgb.astype(np.float32) / 255)
    assert_agree(as_float, want)
    as16 = det.predict(rgb.astype(np.uint16) * 257)  # 16-bit: same image, 1/65535 scale
    assert_agree(as16, want)
    grey = det.predict(rgb[:, :, 0])
    assert grey.ok and grey.anomaly_map.shape == rgb.shape[:2]
    batch4 = det.predict(np.stack([rgb, rgb]))  # (N, H, W, C) array = a batch
    assert isinstance(batch4, list) and len(batch4) == 2
    tensor_batch = det.predict(torch.from_numpy(np.stack([rgb, rgb])).permute(0, 3, 1, 2))
    assert isinstance(tensor_batch, list) and len(tensor_batch) == 2
    assert_identical(tensor_batch[0], batch4[0])


# ---- bundles and backends that cannot be used --------------------------------------------------------
def test_bundle_and_backend_errors(bundle: Path, tmp_path: Path) -> None:
    newer = tmp_path / "newer"
    shutil.copytree(bundle, newer)
    data = json.loads((newer / "config.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (newer / "config.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="newer than this aminet-edge"):
        Detector.load(newer)
    with pytest.raises(BundleError, match="not found"):
        Detector.load(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    shutil.copytree(bundle, bare)
    for name in ("model.onnx", "model_a.onnx", "model_b.onnx"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(BundleError, match="model.onnx not found"):
        Detector.load(bare, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="CUDA GPU only"):
        Detector.load(bundle, backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        Detector.load(bundle, backend="tflite")
    with pytest.raises(TypeError, match="unknown option"):
        Detector.load(bundle, backend="onnxruntime", cuda_graph=True)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    (corrupt / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="model.onnx: graph is 11 bytes, .* recorded"):
        Detector.load(corrupt, backend="onnxruntime")
    from aminet_edge.bundle import make_record  # recorded as it is (a broken exporter): onnxruntime's own error

    config = read_config(corrupt)
    config.artifacts["onnx"]["model"].update(make_record(corrupt, corrupt / "model.onnx"))
    write_config(corrupt, config)
    with pytest.raises(BundleError, match="cannot load"):
        Detector.load(corrupt, backend="onnxruntime")


def fake_engine(bundle: Path, graph: str = "model", precision: str = "fp16", backend: str = "tensorrt_rtx",
                target: str = "rtx", content: bytes = b"engine bytes", builder_version: str | None = None) -> dict:  # type: ignore[type-arg]
    """Write a stand-in engine file into the bundle and return its record as build_engine writes it
    (builder_version: the installed flavour's, so the version check passes, unless given)."""
    from aminet_edge.bundle import engine_name, graph_computes, make_record
    from aminet_edge.export import trt_compat

    if builder_version is None:
        builder_version = (trt_compat.load_backend(backend).__version__ if trt_compat.is_installed(backend)
                           else "0.0-absent")
    path = bundle / "engines" / engine_name(backend, target, precision, graph)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    config = read_config(bundle)
    return make_record(bundle, path, backend=backend, builder=backend, builder_version=builder_version,
                       target=target, precision=precision, graph=graph, compute_capabilities=[86, 89],
                       input_size=config.model.image_size, **graph_computes(config),
                       weights_sha256=config.artifacts["weights"]["sha256"])


def set_engines(bundle: Path, records: list) -> None:  # type: ignore[type-arg]
    config = read_config(bundle)
    config.artifacts = dict(config.artifacts, engines=records)
    write_config(bundle, config)


def test_engine_lookup_errors(bundle: Path, tmp_path: Path) -> None:
    from aminet_edge.runtime.backends.tensorrt_backend import find_engine, list_engines

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with pytest.raises(EngineError, match="no TensorRT engine"):
        find_engine(copy, read_config(copy))
    record = fake_engine(copy)
    (copy / record["path"]).unlink()
    set_engines(copy, [record])
    (info,) = list_engines(copy, read_config(copy))
    assert info.flavour == "tensorrt_rtx" and info.precision == "fp16" and info.graph == "model"
    with pytest.raises((EngineError, BackendUnavailableError), match="missing|not installed"):
        find_engine(copy, read_config(copy))


def test_engine_choice_single_or_split(bundle: Path, tmp_path: Path) -> None:
    """Records as aminet_edge.export.engine writes them (checksums are verified when the backend is
    created, not by find_engine; no GPU here, so no GPU check)."""
    from aminet_edge.runtime.backends.tensorrt_backend import find_engine, installed_flavours

    if "tensorrt_rtx" not in installed_flavours():
        pytest.skip("tensorrt_rtx is not installed")
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)

    def record(graph: str, precision: str = "fp16") -> dict:  # type: ignore[type-arg]
        return fake_engine(copy, graph, precision)

    def use(records: list, **kw) -> list[str]:  # type: ignore[no-untyped-def, type-arg]
        set_engines(copy, records)
        return [e.graph + ":" + e.precision for e in find_engine(copy, read_config(copy), **kw)]

    pair = [record("model_a"), record("model_b")]
    assert use(pair) == ["model_a:fp16", "model_b:fp16"]
    assert use([*pair, record("model"), record("model", "fp32")]) == ["model:fp16"]
    assert use([*pair, record("model")], split=True) == ["model_a:fp16", "model_b:fp16"]
    assert use([*pair, record("model", "fp32")], precision="fp32") == ["model:fp32"]
    with pytest.raises(EngineError, match="lacks its other half"):
        use([record("model_a")])
    with pytest.raises(EngineError, match="no single-graph TensorRT engine"):
        use(pair, split=False)


# ---- CLI -------------------------------------------------------------------------------------------
def test_predict_command(bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from aminet_edge.runtime.commands import predict_cmd

    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(generated_images()[:3]):
        Image.fromarray(img).save(folder / f"part_{i}.png")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    res = CliRunner().invoke(predict_cmd, [str(bundle), str(folder), str(tmp_path / "missing.png"),
                                           "--out", str(out), "--backend", "onnxruntime", "--quiet"])
    assert res.exit_code == 1, res.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and sum(x["ok"] for x in lines) == 3
    assert "empty file" in res.output and "file not found" in res.output
    assert len(list((out / "overlays").glob("*.png"))) == 3
    # a second run into the same --out: refused, the first run's results kept; --overwrite replaces them
    again = [str(bundle), str(folder / "part_0.png"), "--out", str(out), "--no-overlays", "--quiet",
             "--sensitivity", "1"]
    refused = CliRunner().invoke(predict_cmd, again)
    assert refused.exit_code == 1 and "--overwrite" in refused.output and "Traceback" not in refused.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 5
    good = CliRunner().invoke(predict_cmd, again + ["--overwrite"])
    assert good.exit_code == 0, good.output
    assert json.loads((out / "results.jsonl").read_text())["sensitivity"] == 1.0
    assert not list((out / "overlays").glob("*.png"))  # the replaced run's overlays went with it


def test_predict_skips_hidden_files_and_never_deletes_through_a_link(bundle: Path, tmp_path: Path) -> None:
    """Hidden files and folders of an IMAGES folder are not read; --overwrite deletes the earlier run's
    overlays only where it wrote them, never through an OUT/overlays that has become a symbolic link."""
    import os

    from click.testing import CliRunner
    from PIL import Image

    from aminet_edge.runtime.commands import predict_cmd

    folder = tmp_path / "images"
    (folder / ".thumbs").mkdir(parents=True)
    for name in ("part.png", ".part.png", ".thumbs/part.png"):
        Image.fromarray(generated_images()[0]).save(folder / name)
    out = tmp_path / "out"
    args = [str(bundle), str(folder), "--out", str(out), "--backend", "onnxruntime", "--quiet", "--recursive"]
    res = CliRunner().invoke(predict_cmd, args)
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [Path(x["source"]).name for x in lines] == ["part.png"] and lines[0]["overlay"].endswith("overlays/part.png")
    victim = tmp_path / "victim"
    (out / "overlays").rename(victim)  # the user's own folder, now linked where the overlays were
    os.symlink(victim, out / "overlays")
    res = CliRunner().invoke(predict_cmd, args + ["--overwrite", "--no-overlays"])
    assert res.exit_code == 0, res.output
    assert (victim / "part.png").is_file()


def test_predict_overwrite_deletes_only_the_overlays_it_recorded(bundle: Path, tmp_path: Path) -> None:
    """--overwrite deletes the overlays the earlier run recorded in OUT/predict-overlays.json; a user's file
    that a hand-edited results.jsonl (or manifest) lists as an overlay is left, with a warning."""
    from click.testing import CliRunner
    from PIL import Image

    from aminet_edge.runtime.commands import predict_cmd

    image = tmp_path / "part.png"
    Image.fromarray(generated_images()[0]).save(image)
    out = tmp_path / "out"
    args = [str(image), "--out", str(out), "--backend", "onnxruntime", "--quiet"]
    res = CliRunner().invoke(predict_cmd, [str(bundle), *args])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "predict-overlays.json").read_text()) == {"overlays": ["part.png"]}
    keep, outside = out / "overlays" / "notes.png", tmp_path / "keep.png"
    keep.write_bytes(b"user data")
    outside.write_bytes(b"user data")
    record = json.loads((out / "results.jsonl").read_text())
    extra = [{**record, "overlay": str(keep)}, {**record, "overlay": str(out / "overlays" / ".." / ".." / "keep.png")}]
    with (out / "results.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    (out / "predict-overlays.json").write_text(json.dumps({"overlays": ["part.png", "../../keep.png", "sub/x.png"]}))
    res = CliRunner().invoke(predict_cmd, [str(bundle), *args, "--overwrite", "--no-overlays"])
    assert res.exit_code == 0, res.output
    assert keep.read_bytes() == b"user data" and outside.read_bytes() == b"user data"
    assert not (out / "overlays" / "part.png").exists()  # the earlier run's own overlay
    assert f"left {keep} in place" in res.output
    assert json.loads((out / "predict-overlays.json").read_text()) == {"overlays": []}


def test_predict_overlays_never_overwrite(bundle: Path, tmp_path: Path) -> None:
    """Same stems in two folders, a name that is also another's suffixed name, a PNG already in overlays/."""
    from click.testing import CliRunner
    from PIL import Image

    from aminet_edge.runtime.commands import predict_cmd

    img = generated_images()[0]
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
        Image.fromarray(img).save(tmp_path / sub / "x.png")
    Image.fromarray(img).save(tmp_path / "a" / "x_2.png")  # the name the second x.png would be renamed to
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "x_3.png").write_bytes(b"not ours")
    args = [str(bundle), str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"), "--out", str(out),
            "--backend", "onnxruntime", "--quiet"]
    res = CliRunner().invoke(predict_cmd, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    names = [Path(r["overlay"]).name for r in records]
    assert len(set(names)) == 4 and "x_3.png" not in names, names
    assert (out / "overlays" / "x_3.png").read_bytes() == b"not ours"
    assert len(list((out / "overlays").glob("*.png"))) == 5


def test_predict_write_errors_are_reported_not_raised(bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from aminet_edge.runtime.commands import predict_cmd

    Image.fromarray(generated_images()[0]).save(tmp_path / "x.png")
    (tmp_path / "file").write_text("a file where a folder is needed")
    res = CliRunner().invoke(predict_cmd, [str(bundle), str(tmp_path / "x.png"), "--out",
                                           str(tmp_path / "file" / "out"), "--quiet"])
    assert res.exit_code == 1 and "--out" in res.output and "Traceback" not in res.output
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").write_text("a file where the overlays folder goes")  # every overlay write fails
    res = CliRunner().invoke(predict_cmd, [str(bundle), str(tmp_path / "x.png"), str(tmp_path / "x.png"),
                                           "--out", str(out), "--backend", "onnxruntime", "--quiet"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in records] == [True, True]
    assert all("overlay not written" in r["overlay_error"] for r in records)
    assert "2 overlay(s) not written" in res.output


def test_info_on_a_bundle(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main

    monkeypatch.setenv("AMINET_AUTO", "table")  # the table's pick (the measured one: tests/test_auto_backend.py)
    res = CliRunner().invoke(main, ["info", str(bundle)])
    assert res.exit_code == 0, res.output
    assert "inference backends:" in res.output and "  onnxruntime@cpu: available" in res.output
    assert "  graphs: model.onnx, model_a.onnx, model_b.onnx" in res.output
    first = available_cpu_backends(bundle)[0]
    assert f"  auto on cpu: {first} (fp32" in res.output  # fp32: no int8 graphs, and bf16 only where native
    assert "this CPU has" in res.output  # the reason for the order
    if not torch.cuda.is_available():
        assert "  auto on cuda: none (no backend can run" in res.output
    (tmp_path / "config.json").write_text("{}")
    res = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert res.exit_code == 1 and "config.json" in res.output


def test_benchmark_command(bundle: Path) -> None:
    from click.testing import CliRunner

    from aminet_edge.runtime.commands import benchmark_cmd

    res = CliRunner().invoke(benchmark_cmd, [str(bundle), "--backend", "onnxruntime", "--batch", "1",
                                             "--batch", "2", "--iterations", "2", "--warmup", "1"])
    assert res.exit_code == 0, res.output
    assert "| onnxruntime | fp32 | cpu | 2 |" in res.output and "p99 ms" in res.output
    res = CliRunner().invoke(benchmark_cmd, [str(bundle), "--backend", "torch", "--precision", "int8"])
    assert res.exit_code != 0 and "--precision applies to the onnxruntime and openvino" in res.output


# ---- GPU ---------------------------------------------------------------------------------------------
def _gpu_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("mask, score_map", MASK_MAPS)
@pytest.mark.parametrize("backend", ["torch", "tensorrt"])
def test_gpu_backends_agree(tmp_path_factory: pytest.TempPathFactory, backend: str, mask: str,
                            score_map: str) -> None:
    """On CUDA against the CPU reference, for either test-time mask and score map (the guide's bank product,
    ArgMin and Gather run on the GPU; the Triton/CUDA ops then serve the score map only, with the guide's
    token distances when the map adds them)."""
    reason = _gpu_reason()
    if reason is not None:
        pytest.skip(reason)
    bundle = shared_bundle(tmp_path_factory, mask, score_map)
    reason = backend_status(backend, bundle, read_config(bundle), "cuda")
    if reason is not None:
        pytest.skip(reason)
    reference = detector(bundle, "torch", ops_backend="reference").predict(inputs_for_agreement())
    det = Detector.load(bundle, backend=backend, device="cuda")
    for got, want in zip(det.predict(inputs_for_agreement()), reference):
        if backend == "torch":
            assert_agree(got, want)
        else:  # the engine may be fp16: scores within 5 %, no exact mask equality
            assert got.ok and math.isclose(got.score, want.score, rel_tol=5e-2)
    first = det.predict(generated_images())
    for a, b in zip(first, det.predict(generated_images())):
        assert_identical(a, b)


# ---- TensorRT backend plumbing on a simulated device ------------------------------------------------
# No GPU here: a fake `tensorrt` module runs each "engine" with onnxruntime on the ONNX graph it was
# built from, over a fake device memory (bytearrays addressed by integer pointers) and a stream that
# records work while capturing. This checks the backend's own logic (profile shapes, set_input_shape,
# tensor addresses, copies, batching, the split pipeline's in-place buffer sharing and kernel arguments,
# manual CUDA graph capture/replay), not TensorRT or CUDA themselves.
class FakeMemory:
    name = "fake"
    supports_graphs = True

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.next = 4096
        self.stream = 7
        self.capturing: list | None = None  # type: ignore[type-arg]
        self.launches = 0

    def activate(self):  # type: ignore[no-untyped-def]
        import contextlib

        return contextlib.nullcontext()

    def alloc(self, nbytes: int):  # type: ignore[no-untyped-def]
        from aminet_edge.runtime.backends.cuda_memory import DeviceBuffer

        ptr, self.next = self.next, self.next + nbytes + 256
        self.mem[ptr] = bytearray(max(nbytes, 1))
        return DeviceBuffer(ptr, nbytes)

    def view(self, ptr: int, dtype, shape) -> np.ndarray:  # type: ignore[no-untyped-def]
        count = int(np.prod(shape))
        return np.frombuffer(self.mem[ptr], dtype=dtype, count=count).reshape(shape)

    def pinned(self, shape, dtype) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.zeros(shape, dtype)

    def htod(self, dst, src: np.ndarray, nbytes: int | None = None) -> None:  # type: ignore[no-untyped-def]
        n = src.nbytes if nbytes is None else nbytes
        ptr = dst if isinstance(dst, int) else dst.ptr
        self.mem[ptr][:n] = src.reshape(-1).view(np.uint8)[:n].tobytes()

    def dtoh(self, dst: np.ndarray, src, nbytes: int | None = None) -> None:  # type: ignore[no-untyped-def]
        n = dst.nbytes if nbytes is None else nbytes
        ptr = src if isinstance(src, int) else src.ptr
        dst.reshape(-1).view(np.uint8)[:n] = np.frombuffer(self.mem[ptr], np.uint8, n)

    def synchronize(self) -> None:
        pass

    def enqueue(self, fn) -> None:  # type: ignore[no-untyped-def]
        if self.capturing is not None:
            self.capturing.append(fn)
        else:
            fn()

    def begin_capture(self) -> None:
        self.capturing = []

    def end_capture(self):  # type: ignore[no-untyped-def]
        graph, self.capturing = self.capturing, None
        return graph

    def launch(self, graph) -> None:  # type: ignore[no-untyped-def]
        self.launches += 1
        for fn in graph:
            fn()

    def close(self) -> None:
        self.mem.clear()


def fake_tensorrt(memory: FakeMemory):  # type: ignore[no-untyped-def]
    import types

    from aminet_edge.runtime.backends.onnxruntime_backend import make_session

    ort_types = {"tensor(float)": np.dtype(np.float32), "tensor(bool)": np.dtype(np.bool_)}

    class Context:
        def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape) -> bool:  # type: ignore[no-untyped-def]
            self.shapes[name] = tuple(shape)
            return 1 <= shape[0] <= self.engine.max_batch

        def get_tensor_shape(self, name: str) -> tuple:  # type: ignore[type-arg]
            if name in self.shapes:
                return self.shapes[name]
            return (next(iter(self.shapes.values()))[0], *self.engine.rest[name])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert stream == memory.stream
            batch = next(iter(self.shapes.values()))[0]

            def run() -> None:
                # as TensorRT requires: a captured graph replays on a context still shaped as at capture
                assert all(shape[0] == batch for shape in self.shapes.values()), "context re-shaped since capture"
                e = self.engine
                feeds = {n: memory.view(self.addresses[n], e.dtypes[n], (batch, *e.rest[n])).copy() for n in e.inputs}
                for n, value in zip(e.outputs, e.session.run(e.outputs, feeds)):
                    memory.view(self.addresses[n], e.dtypes[n], value.shape)[...] = value
            memory.enqueue(run)
            return True

    class Engine:
        def __init__(self, onnx_file: str, max_batch: int) -> None:
            self.session = make_session(Path(onnx_file))
            self.max_batch = max_batch
            io = [(i, "in") for i in self.session.get_inputs()] + [(o, "out") for o in self.session.get_outputs()]
            self.names = [t.name for t, _ in io]
            self.modes = {t.name: m for t, m in io}
            self.inputs = [t.name for t, m in io if m == "in"]
            self.outputs = [t.name for t, m in io if m == "out"]
            self.dtypes = {t.name: ort_types[t.type] for t, _ in io}
            self.rest = {t.name: tuple(t.shape[1:]) for t, _ in io}
            self.num_io_tensors = len(self.names)
            self.contexts: list[Context] = []

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return self.modes[name]

        def get_tensor_dtype(self, name: str) -> np.dtype:
            return self.dtypes[name]

        def get_tensor_shape(self, name: str) -> tuple:  # type: ignore[type-arg]
            return (-1, *self.rest[name])

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:  # type: ignore[type-arg]
            return [(1, *self.rest[name]), (1, *self.rest[name]), (self.max_batch, *self.rest[name])]

        def create_execution_context(self) -> Context:
            self.contexts.append(Context(self))
            return self.contexts[-1]

    class Runtime:
        def __init__(self, logger) -> None:  # type: ignore[no-untyped-def]
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            spec = json.loads(data)
            return Engine(spec["onnx"], spec["max_batch"])

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    return types.SimpleNamespace(__version__="10.99-fake", Runtime=Runtime, Logger=Logger, nptype=lambda dt: dt,
                                 TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))


def fake_kernels(memory: FakeMemory, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """aminet_edge.ops.cuda launchers computing with the C++ CPU kernels on the fake device memory.
    Returns the launch counts by kernel name, updated as they are launched."""
    from aminet_edge.ops import cpu, cuda

    calls = {"adaptive_mask": 0, "score_map": 0}

    def adaptive_mask(tokens, centers, dtype, B, L, P, D, lam, mask, min_dist, assign, stream):  # type: ignore[no-untyped-def]
        assert dtype == cuda.DTYPE_FLOAT32 and stream == memory.stream
        calls["adaptive_mask"] += 1

        def run() -> None:
            m, d, a = cpu.adaptive_mask(memory.view(tokens, np.float32, (B, L, D)),
                                        memory.view(centers, np.float32, (B, P, D)), lam)
            memory.view(mask, np.bool_, (B, L))[...] = m
            memory.view(min_dist, np.float32, (B, L))[...] = d
            memory.view(assign, np.int64, (B, L))[...] = a
        memory.enqueue(run)

    def score_map(feat, recon, dtype, B, C, h, w, a_h, H, a_w, W, code, amap, score, workspace, stream,  # type: ignore[no-untyped-def]
                  token_map=0, gh=0, gw=0, a_hg=0, a_wg=0, token_weight=0.0):
        assert np.array_equal(memory.view(a_h, np.float32, (H, h)), cpu.smoothing_matrix(h, H, 4.0))
        if token_map:
            for mat, n, size in ((a_hg, gh, H), (a_wg, gw, W)):
                assert np.array_equal(memory.view(mat, np.float32, (size, n)), cpu.smoothing_matrix(n, size, 4.0))
        calls["score_map"] += 1
        calls["token_map"] = calls.get("token_map", 0) + bool(token_map)

        def run() -> None:
            tokens = memory.view(token_map, np.float32, (B, gh, gw)).copy() if token_map else None
            m, s = cpu.score_map(memory.view(feat, np.float32, (B, C, h, w)), memory.view(recon, np.float32,
                                 (B, C, h, w)), (H, W), 4.0, "std" if code == cuda.SCORE_STD else "max",
                                 token_map=tokens, token_weight=token_weight)
            memory.view(amap, np.float32, (B, H, W))[...] = m
            memory.view(score, np.float32, (B,))[...] = s
        memory.enqueue(run)

    monkeypatch.setattr(cuda, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda, "adaptive_mask", adaptive_mask)
    monkeypatch.setattr(cuda, "score_map", score_map)
    monkeypatch.setattr(cuda, "smoothing_matrix", cpu.smoothing_matrix)
    monkeypatch.setattr(cuda, "score_map_workspace_bytes", lambda B, h, w, H, gw=0: 64)
    return calls


@pytest.mark.parametrize("mask, score_map", MASK_MAPS)
@pytest.mark.parametrize("split", [False, True], ids=["single", "split"])
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["stream", "graph"])
def test_tensorrt_backend_on_a_simulated_device(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, split: bool, cuda_graph: bool,
                                                mask: str, score_map: str) -> None:
    """Split engines with the nearest-normal guide: engine B reads engine A's mask in place, the
    adaptive_mask kernel never runs; with the guide map the score_map kernel reads engine A's
    guide_distance in place."""
    from aminet_edge.runtime.backends import tensorrt_backend as trb
    from aminet_edge.runtime.backends.cuda_memory import CudaMemory

    bundle = shared_bundle(tmp_path_factory, mask, score_map)
    if split and backend_status("onnxruntime-split", bundle, read_config(bundle), "cpu") is not None:
        pytest.skip("needs the C++ kernels to stand in for the CUDA ones")
    memory = FakeMemory()
    monkeypatch.setattr(CudaMemory, "create", staticmethod(lambda *a, **k: memory))
    monkeypatch.setattr(trb, "import_tensorrt", lambda flavour: fake_tensorrt(memory))
    graphs = ["model_a", "model_b"] if split else ["model"]
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    from aminet_edge.export.engine import baked_graph

    built = {}  # the graph each engine is built from (a guided bundle's with the bank baked in, as build_engine)
    for g in graphs:
        baked = baked_graph(bundle, read_config(bundle), g, bundle / f"{g}.onnx")
        built[g] = bundle / f"{g}.onnx" if baked is None else tmp_path / f"{g}-baked.onnx"
        if baked is not None:
            built[g].write_bytes(baked)
    set_engines(copy, [fake_engine(copy, g, "fp32", "tensorrt", "gpu", json.dumps(
        {"onnx": str(built[g]), "max_batch": 4}).encode(), "10.99-fake") for g in graphs])
    infos = trb.list_engines(copy, read_config(copy))  # the checksums are verified for real by create
    monkeypatch.setattr(trb, "find_engine", lambda *a, **k: infos)  # no tensorrt to check versions against
    calls = fake_kernels(memory, monkeypatch) if split else {}
    config = read_config(copy)
    backend = trb.create("tensorrt", copy, config, "cuda", cuda_graph=cuda_graph)
    assert backend.max_batch == 4 and backend.describe().startswith("tensorrt 10.99-fake cuda")
    guided = split and mask == "nearest_normal"
    assert ("nearest-normal guide" in backend.describe()) == guided
    det = Detector(backend, config, copy)
    images = generated_images()  # 6 images -> backend calls of 4 and 2
    got = det.predict(images)
    want = detector(bundle, "onnxruntime-split" if split else "onnxruntime").predict(images)
    for a, b in zip(got, want):
        assert_agree(a, b)
        assert a.backend == "tensorrt" and a.timing.batch_size in (4, 2)
    again = det.predict(images)
    for a, b in zip(got, again):
        assert_identical(a, b)
    assert (memory.launches > 0) == cuda_graph  # manual capture replays once captured per batch size
    if split:  # with the guide, engine A's mask is engine B's input: no adaptive_mask launch
        assert calls["score_map"] > 0 and (calls["adaptive_mask"] == 0) == guided, calls
        assert (calls.get("token_map", 0) == calls["score_map"]) == (score_map == GUIDE_MAP), calls
    for runner in backend.runners:  # graphs: the shared context plus one per captured batch size
        assert len(runner.engine.contexts) == (3 if cuda_graph else 1)
        assert sorted(runner.batch_contexts) == ([2, 4] if cuda_graph else [])
        for batch, context in runner.batch_contexts.items():
            assert all(shape[0] == batch for shape in context.shapes.values())
            assert context.addresses == {n: b.ptr for n, b in runner.buffers.items()}
    det.close()
    assert not memory.mem
