"""int8 graphs validated against fp32 on held-out normal images (aminet_edge.runtime.int8_validation).

The tiny shared bundle (test_detector.shared_bundle) exported with `--precision int8` (onnxruntime's dynamic
int8 graphs); its generated images stand in for the held-out normals. The figures are checked against an
independent path (the Results of `Detector.predict`, not the raw outputs the validation reads), and the
verdict is forced both ways by moving the calibrated thresholds, not by timing or chance.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle and the int8 export need torch

from aminet_edge.bundle import int8_accepted, read_config, write_config  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.runtime.backends import auto, backend_status  # noqa: E402
from aminet_edge.runtime.detector import RawOutput  # noqa: E402
from aminet_edge.runtime.int8_validation import MAX_TOKENS_CHANGED, compare, validate_int8  # noqa: E402

from test_detector import generated_images, shared_bundle  # noqa: E402


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aminet_edge.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("int8val") / "bundle"
    shutil.copytree(shared_bundle(tmp_path_factory), path, ignore=shutil.ignore_patterns("cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(path, "int8")
    return path


def set_thresholds(bundle: Path, image: float, pixel: float) -> None:
    config = read_config(bundle)
    config.calibration = dataclasses.replace(config.calibration, image_threshold=image, pixel_threshold=pixel)
    write_config(bundle, config)


def raw(score: float, mask: list[bool], peak: float = 1.0) -> RawOutput:
    return RawOutput(np.full((4, 4), peak, np.float32), score, np.array(mask), 4, 4, 0.0, 0.0, 1)


def one_by_one(detector: Detector, images: list) -> list[RawOutput]:  # type: ignore[type-arg]
    """Raw outputs at batch 1 (the validation's batch: fp32 results depend on the batch by rounding)."""
    return [detector.infer([x])[0] for x in images]  # type: ignore[misc]


def test_compare_applies_the_limits() -> None:
    fp32 = [raw(1.0, [False] * 200), raw(3.0, [True] * 200)]
    same = compare(fp32, fp32, 2.0, 0.5, "onnxruntime")
    assert same.accepted and same.mask_tokens_changed == 0 and same.max_score_rel_diff == 0
    at_limit = [raw(1.0, [True] * 2 + [False] * 198), raw(3.0, [True] * 200)]  # 2 of 400 = 0.5 %
    assert compare(fp32, at_limit, 2.0, 0.5, "onnxruntime").accepted
    above = [raw(1.0, [True] * 3 + [False] * 197), raw(3.0, [True] * 200)]
    verdict = compare(fp32, above, 2.0, 0.5, "onnxruntime")
    assert not verdict.accepted and verdict.mask_tokens_changed == 3 / 400 > MAX_TOKENS_CHANGED
    flipped = compare(fp32, [raw(2.1, [False] * 200), raw(3.0, [True] * 200)], 2.0, 0.5, "onnxruntime")
    assert not flipped.accepted and flipped.image_decisions_changed == 1
    assert flipped.max_score_rel_diff == pytest.approx(1.1)
    pixel = compare(fp32, [raw(1.0, [False] * 200, peak=0.4), raw(3.0, [True] * 200)], 2.0, 0.5, "onnxruntime")
    assert not pixel.accepted and pixel.pixel_decisions_changed == 1 and pixel.image_decisions_changed == 0
    assert "refused: 0.750 % of mask tokens changed (limit 0.5 %)" in verdict.summary()
    with pytest.raises(ValueError, match="same, non-empty set"):
        compare(fp32, fp32[:1], 2.0, 0.5, "onnxruntime")


def test_validation_figures_match_the_detectors(int8_bundle: Path) -> None:
    images = generated_images()
    results = validate_int8(int8_bundle, images, record=False)
    config = read_config(int8_bundle)
    want = {"model_int8": "onnxruntime"}
    if backend_status("onnxruntime-split", int8_bundle, config, "cpu") is None:
        want["model_b_int8"] = "onnxruntime-split"
    assert set(results) == set(want)
    for key, backend in want.items():
        verdict = results[key]
        assert not isinstance(verdict, str), verdict
        fp32 = Detector.load(int8_bundle, backend=backend, precision="fp32", batch_size=1).predict(images)
        int8 = Detector.load(int8_bundle, backend=backend, precision="int8", batch_size=1).predict(images)
        tokens = sum(a.token_mask.size for a in fp32)
        changed = sum(int((a.token_mask != b.token_mask).sum()) for a, b in zip(fp32, int8))
        assert verdict.images == len(images) and verdict.mask_tokens_changed == changed / tokens
        assert verdict.image_decisions_changed == sum(a.is_anomaly != b.is_anomaly for a, b in zip(fp32, int8))
        # the pixel decision is the map maximum at the model's resolution (what the threshold is calibrated on)
        pixel = config.calibration.pixel_threshold
        raw32, raw8 = (one_by_one(Detector.load(int8_bundle, backend=backend, precision=p), images)
                       for p in ("fp32", "int8"))
        assert verdict.pixel_decisions_changed == sum(
            (a.amap.max() > pixel) != (b.amap.max() > pixel) for a, b in zip(raw32, raw8))  # type: ignore[union-attr]
        assert verdict.max_score_rel_diff == pytest.approx(
            max(abs(b.score - a.score) / abs(a.score) for a, b in zip(fp32, int8)), rel=1e-6)
        assert verdict.accepted == (verdict.mask_tokens_changed <= MAX_TOKENS_CHANGED
                                    and verdict.image_decisions_changed == 0 and verdict.pixel_decisions_changed == 0)


def test_accepted_graph_becomes_an_auto_candidate_refused_one_not(int8_bundle: Path) -> None:
    images = generated_images()
    fp32, int8 = (one_by_one(Detector.load(int8_bundle, backend="onnxruntime", precision=p), images)
                  for p in ("fp32", "int8"))
    scores = [(a.score, b.score) for a, b in zip(fp32, int8)]  # type: ignore[union-attr]
    peak = max(float(a.amap.max()) for a in fp32)  # type: ignore[union-attr]
    # thresholds far above every image: the normals stay normal in both precisions -> accepted
    set_thresholds(int8_bundle, 10 * max(max(s) for s in scores), 10 * peak)
    verdict = validate_int8(int8_bundle, images)["model_int8"]
    assert not isinstance(verdict, str) and verdict.accepted, verdict
    config = read_config(int8_bundle)
    assert config.artifacts["onnx"]["model_int8"]["validation"] == dataclasses.asdict(verdict)
    assert int8_accepted(config, "model", "int8")
    assert auto.Candidate("onnxruntime", "int8") in auto.candidates(int8_bundle, config)
    # an image threshold between one image's fp32 and int8 scores: that image's decision flips -> refused
    a, b = max(scores, key=lambda s: abs(s[1] - s[0]))
    assert a != b, "int8 left every score unchanged: the refusal cannot be provoked"
    set_thresholds(int8_bundle, (a + b) / 2, 10 * peak)
    verdict = validate_int8(int8_bundle, images)["model_int8"]
    assert not isinstance(verdict, str) and not verdict.accepted and verdict.image_decisions_changed >= 1
    assert "refused:" in verdict.summary() and "image and" in verdict.summary()
    config = read_config(int8_bundle)
    assert config.artifacts["onnx"]["model_int8"]["validation"]["accepted"] is False
    assert not int8_accepted(config, "model", "int8")
    assert auto.Candidate("onnxruntime", "int8") not in auto.candidates(int8_bundle, config)
    # re-exporting replaces the record: a new graph is unvalidated until validated again
    from aminet_edge.export.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(int8_bundle, "int8")
    assert "validation" not in read_config(int8_bundle).artifacts["onnx"]["model_int8"]


def test_held_out_images_need_the_recorded_training_data(int8_bundle: Path) -> None:
    pytest.importorskip("click")
    from aminet_edge.export.commands import held_out_images

    images, why = held_out_images(str(int8_bundle))  # the tiny bundle was not trained by `train`
    assert images == [] and why == "config.json records no training data (train.roots)"
    with pytest.raises(ValueError, match="no held-out normal images"):
        validate_int8(int8_bundle, [])


def test_export_int8_validates_on_the_recorded_held_out_split(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main
    from aminet_edge.data.synthetic import make_synthetic_dataset

    from test_bundle_integrity import quick_train

    data = make_synthetic_dataset(tmp_path / "data", n_train=10, n_test_good=1, n_test_defect=1, size=64)
    run = quick_train(data, tmp_path / "run")
    held = read_config(run).train["held_out"]
    assert held >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(main, ["export", str(run), "--precision", "int8", "--no-split"])
    assert res.exit_code == 0, res.output
    record = read_config(run).artifacts["onnx"]["model_int8"]["validation"]
    assert record["images"] == held and record["backend"] == "onnxruntime"
    verdict = "accepted" if record["accepted"] else "refused"
    assert f"model_int8: {verdict}: {100 * record['mask_tokens_changed']:.3f} % of mask tokens changed" in res.output
    assert f"of {held} held-out normal images changed" in res.output and f"images of {data}" in res.output


def test_a_graph_replaced_while_validated_gets_no_verdict(int8_bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-export finishing while the int8 graphs are validated: its new, unvalidated model_int8 got the
    old graph's verdict ("accepted": auto then timed it); the other graph's verdict is still recorded."""
    import aminet_edge.runtime.int8_validation as validation

    bundle = Path(shutil.copytree(int8_bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns("cache")))
    compared = validation.compare
    replaced: list[str] = []

    def concurrent(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not replaced:
            config = read_config(bundle)
            config.artifacts["onnx"]["model_int8"]["sha256"] = "0" * 64  # another graph in its place
            write_config(bundle, config)
            replaced.append("model_int8")
        return compared(*args, **kwargs)

    monkeypatch.setattr(validation, "compare", concurrent)
    results = validate_int8(bundle, generated_images()[:2])
    assert not isinstance(results["model_int8"], str)  # validated: the graph it loaded
    graphs = read_config(bundle).artifacts["onnx"]
    assert "validation" not in graphs["model_int8"]
    assert graphs["model_b_int8"]["validation"] == dataclasses.asdict(results["model_b_int8"])
