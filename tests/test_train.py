"""Training end to end on generated data: bundle contents, repeatability, resume, few-shot, unified, cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from aminet_edge.bundle import read_config
from aminet_edge.config import ModelConfig, TrainConfig
from aminet_edge.data.images import preprocess, read_image
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.evaluation.evaluate import evaluate_bundle
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.model.pipeline import load_pipeline
from aminet_edge.training.cache import build_feature_cache
from aminet_edge.training.trainer import train

SMALL = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=1,
                    num_clusters=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=12, n_test_good=3, n_test_defect=2,
                                  size=64)


def run(data: Path | list[Path], out: Path, epochs: int = 2, **kw) -> Path:  # type: ignore[no-untyped-def]
    return train(data, out, model=SMALL, train_cfg=TrainConfig(epochs=epochs, batch_size=4, lr=1e-3),
                 pretrained=False, progress=False, **kw)


def weights(bundle: Path) -> dict[str, np.ndarray]:
    return load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))


def test_bundle_is_complete_and_reloads(data: Path, tmp_path: Path) -> None:
    bundle = run(data, tmp_path / "run")
    config = read_config(bundle)
    # the mask training chose, recorded: 3 held-out images are too few for the guide (tests/test_mask_choice.py)
    assert config.model == dataclasses.replace(SMALL, mask="adaptive") and config.in_channels == 176
    assert config.score.map == "reconstruction" and config.train["mask_choice"].startswith("adaptive, the paper's")
    assert config.train["images"] == 9 and config.train["held_out"] == 3  # at least 3 held out
    assert len(config.train["history"]) == 2
    cal = config.calibration
    assert cal is not None and cal.image_threshold > cal.normal_image_scores["mean"] > 0
    pipeline, _ = load_pipeline(bundle)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        amap, score, mask = pipeline(x)
        again = pipeline(x)
    assert amap.shape == (2, 64, 64) and score.shape == (2,) and mask.shape == (2, 16)
    assert torch.equal(amap, again[0]) and torch.equal(mask, again[2])
    metrics = evaluate_bundle(bundle, data, json_path=tmp_path / "m.json", heatmaps=tmp_path / "h",
                              progress=False)
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and "pixel_auroc" in metrics and "aupro" in metrics
    assert read_config(bundle).calibration.f1_image_threshold == metrics["f1_thresholds"]["image"]
    assert len(list((tmp_path / "h").glob("*.png"))) == metrics["images"] == 9
    # the stored F1 threshold, applied as the runtime does (float32 score > threshold), gives the F1 it reports
    from sklearn.metrics import f1_score

    from aminet_edge.data.datasets import load_dataset

    test = load_dataset(data).test
    scores, _ = pipeline.score_paths([s.path for s in test], config.mean, config.std)
    threshold = np.float32(read_config(bundle).calibration.f1_image_threshold)
    assert f1_score([s.label for s in test], scores > threshold) == pytest.approx(metrics["image_f1_max"], abs=1e-12)
    assert_evaluate_handles_masks(bundle, data, metrics, tmp_path)


def assert_evaluate_handles_masks(bundle: Path, data: Path, metrics: dict, tmp_path: Path) -> None:
    """Without masks: the image metrics, and a note that pixel metrics need masks. A mask sized unlike its
    image: refused, naming the file."""
    import shutil

    from PIL import Image

    bare = Path(shutil.copytree(data, tmp_path / "bare", ignore=shutil.ignore_patterns("ground_truth")))
    got = evaluate_bundle(bundle, bare, store_thresholds=False, progress=False)
    assert got["image_auroc"] == metrics["image_auroc"] and got["image_ap"] == metrics["image_ap"]
    assert "pixel_auroc" not in got and "need ground-truth masks" in got["pixel_note"]
    assert set(got["f1_thresholds"]) == {"image"}
    odd = Path(shutil.copytree(data, tmp_path / "odd"))
    mask = sorted((odd / "ground_truth").rglob("*.png"))[0]
    Image.open(mask).resize((32, 64)).save(mask)
    with pytest.raises(ValueError, match=f"{mask.name}: mask is 32x64 px but its image .* is 64x64 px"):
        evaluate_bundle(bundle, odd, store_thresholds=False, progress=False)


def test_fixed_seed_repeats_and_resume_matches(data: Path, tmp_path: Path) -> None:
    a = weights(run(data, tmp_path / "a"))
    b = weights(run(data, tmp_path / "b"))
    run(data, tmp_path / "c", epochs=1)
    assert_resume_refuses_changes(data, tmp_path)
    c = weights(run(data, tmp_path / "c", epochs=2, resume=True))
    assert read_config(tmp_path / "c").train["history"][0]["epoch"] == 1
    for key in a:
        assert np.array_equal(a[key], b[key]), key
        assert np.array_equal(a[key], c[key]), key
    train(data, tmp_path / "c", model=SMALL, train_cfg=TrainConfig(epochs=3, batch_size=4, lr=1e-4),
          pretrained=False, progress=False, resume=True, allow_changed_settings=True)  # asked for: continues
    assert [h["epoch"] for h in read_config(tmp_path / "c").train["history"]] == [1, 2, 3]


def assert_resume_refuses_changes(data: Path, tmp_path: Path) -> None:
    """--resume needs a checkpoint, and refuses settings other than the checkpoint's, naming each."""
    with pytest.raises(ValueError, match="no checkpoint"):
        run(data, tmp_path / "empty", resume=True)
    out = tmp_path / "c"
    changed = TrainConfig(epochs=2, batch_size=4, lr=1e-4, seed=3)
    with pytest.raises(ValueError, match=r"train\.lr 0\.001 -> 0\.0001.*train\.seed 0 -> 3"):
        train(data, out, model=SMALL, train_cfg=changed, pretrained=False, progress=False, resume=True)
    with pytest.raises(ValueError, match="model.mask_lambda"):
        train(data, out, model=dataclasses.replace(SMALL, mask_lambda=1.0), train_cfg=TrainConfig(
            epochs=2, batch_size=4, lr=1e-3), pretrained=False, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"training images \(9 -> 3"):
        run(data, out, epochs=2, resume=True, few_shot=3)
    assert read_config(out).train["history"][-1]["epoch"] == 1  # refusals leave the run as it was


def test_few_shot_and_unified(data: Path, tmp_path: Path) -> None:
    few = read_config(run(data, tmp_path / "few", epochs=1, few_shot=3))
    assert few.train["images"] == 3 and few.train["held_out"] == 0
    assert few.calibration.normal_image_scores["held_out"] is False
    both = read_config(run([data, data], tmp_path / "uni", epochs=1))
    assert both.train["images"] + both.train["held_out"] == 24


def test_disk_cache_is_reused(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    paths = sorted(str(p) for p in (data / "train" / "good").glob("*.png"))[:3]
    first = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float16", tmp_path, progress=False)
    calls = []
    ext.register_forward_hook(lambda *a: calls.append(1))
    second = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float16", tmp_path, progress=False)
    assert not calls and second.dtype == torch.float16 and torch.equal(first, second)
    memory = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float32", None, progress=False)
    torch.testing.assert_close(memory, first.float(), rtol=1e-3, atol=1e-3)  # fp16 rounding
    # the key covers the backbone's weights and the preprocessing: other weights or mean/std recompute
    torch.manual_seed(1)
    other = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    other.register_forward_hook(lambda *a: calls.append(1))
    fresh = build_feature_cache(other, paths, 64, ext.mean, ext.std, "float16", tmp_path, progress=False)
    assert calls and not torch.equal(fresh, first)
    torch.testing.assert_close(fresh.float(), other(torch.from_numpy(np.stack(
        [preprocess(read_image(p), 64, ext.mean, ext.std) for p in paths]))), rtol=1e-3, atol=1e-3)
    calls.clear()
    build_feature_cache(ext, paths, 64, (0.5,) * 3, (0.5,) * 3, "float16", tmp_path, progress=False)
    assert calls


def test_a_damaged_disk_cache_is_computed_again(data: Path, tmp_path: Path) -> None:
    """A cache whose record was cut short (a crash mid-write) or whose array has another shape is computed
    again with a warning naming it, not a JSON error naming no file (train was stuck until it was found)."""
    torch.manual_seed(0)
    ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    paths = sorted(str(p) for p in (data / "train" / "good").glob("*.png"))[:2]
    first = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float32", tmp_path, progress=False).clone()
    (meta,), (array,) = tmp_path.glob("features-*.json"), tmp_path.glob("features-*.npy")
    for damage in (lambda: meta.write_text('{"compl'), lambda: np.save(array, np.zeros((2, 3), np.float32))):
        damage()
        again = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float32", tmp_path, progress=False)
        assert torch.equal(again, first)
        assert json.loads(meta.read_text())["complete"] is True and np.load(array).shape == tuple(first.shape)


def test_bad_data_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known data layout"):
        run(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("kw, field", [
    ({"train_cfg": TrainConfig(epochs=0)}, "epochs"), ({"train_cfg": TrainConfig(epochs=-1)}, "epochs"),
    ({"train_cfg": TrainConfig(batch_size=0)}, "batch_size"), ({"train_cfg": TrainConfig(lr=0.0)}, "lr"),
    ({"few_shot": 0}, "few_shot"), ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"model": ModelConfig(image_size=0)}, "image_size"),
    # huge values: a torch overflow after the output folder was made, an OverflowError traceback, an OOM kill
    ({"train_cfg": TrainConfig(lr=1e300)}, "lr"), ({"gpu_cache_gb": 1e300}, "gpu_cache_gb"),
    ({"model": ModelConfig(image_size=25600)}, "image_size"),
])
def test_out_of_range_settings_write_nothing(data: Path, tmp_path: Path, kw: dict, field: str) -> None:
    args = {"model": SMALL, "train_cfg": TrainConfig(epochs=1), "pretrained": False, "progress": False} | kw
    with pytest.raises(ValueError, match=field):
        train(data, tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_steps_are_adamw_on_fresh_gradients_and_calibration_is_held_out(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One real run (9 images trained, batch 4: 3 steps). Every optimiser step against AdamW written out
    by hand, applied to the gradient of that step's loss alone (computed independently with
    autograd.grad); and calibration sees exactly the 3 held-out images, none of the trained ones."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    from aminet_edge.model.aminet import AMINet
    from aminet_edge.training import trainer

    seen: dict[str, list[str]] = {}
    real_cache, real_calibrate = trainer.build_feature_cache, trainer.calibrate

    def cache(extractor, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["trained"] = [str(p) for p in paths]
        return real_cache(extractor, paths, *args, **kwargs)

    def calibrate(pipeline, normals, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["calibrated"] = [str(s.path) for s in normals]
        return real_calibrate(pipeline, normals, *args, **kwargs)

    monkeypatch.setattr(trainer, "build_feature_cache", cache)
    monkeypatch.setattr(trainer, "calibrate", calibrate)

    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.05)
    fresh: list[list[torch.Tensor | None]] = []
    real_losses = AMINet.losses

    def losses(self, feat, loss_cfg, generator=None):  # type: ignore[no-untyped-def]
        out = real_losses(self, feat, loss_cfg, generator)
        params = [p for p in self.parameters() if p.requires_grad]
        fresh.append(list(torch.autograd.grad(out["total"], params, retain_graph=True, allow_unused=True)))
        return out

    moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    before: list[list[torch.Tensor]] = []
    steps = []

    def pre(opt, args, kwargs):  # type: ignore[no-untyped-def]
        params = opt.param_groups[0]["params"]
        for p, g in zip(params, fresh[-1]):
            if g is None:
                assert p.grad is None or not p.grad.any()
            else:
                torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # this step's gradient only
        before.append([p.detach().clone() for p in params])

    def post(opt, args, kwargs):  # type: ignore[no-untyped-def]
        t = len(before)
        b1, b2 = cfg.betas
        for i, (p, p0, g) in enumerate(zip(opt.param_groups[0]["params"], before[-1], fresh[-1])):
            if g is None:
                continue
            m, v = moments.get(i, (torch.zeros_like(g), torch.zeros_like(g)))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            moments[i] = (m, v)
            want = p0 * (1 - cfg.lr * cfg.weight_decay) - cfg.lr / (1 - b1 ** t) * m / (
                (v / (1 - b2 ** t)).sqrt() + 1e-8)
            torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7)
        steps.append(t)

    monkeypatch.setattr(AMINet, "losses", losses)
    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        config = read_config(train(data, tmp_path / "run", model=SMALL, train_cfg=cfg, pretrained=False,
                                   progress=False))
    finally:
        for h in handles:
            h.remove()
    assert steps == [1, 2, 3]
    every = {str(p) for p in (data / "train" / "good").glob("*.png")}
    trained, held = set(seen["trained"]), set(seen["calibrated"])
    assert len(held) == config.train["held_out"] == config.calibration.normal_image_scores["n"] == 3
    assert not trained & held and trained | held == every


def test_tiled_training_calibrates_what_the_tiled_detector_scores(data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--tile: the training samples are every tile of the training images (9 images x 3 x 3 tiles of 32 px,
    overlap 8, on 64 px images), the bundle records the tiling, its thresholds are the held-out images
    scored as the tiled runtime Detector scores them, and evaluate follows the bundle (a tiling other than
    the bundle's is a measurement: noted, F1 thresholds not stored)."""
    from aminet_edge.config import TileConfig
    from aminet_edge.evaluation.metrics import threshold_from_normal
    from aminet_edge.runtime import Detector
    from aminet_edge.training import trainer

    cached: list[int] = []
    real_cache = trainer.build_feature_cache

    def cache(*args, **kwargs):  # type: ignore[no-untyped-def]
        feats = real_cache(*args, **kwargs)
        cached.append(len(feats))
        return feats

    monkeypatch.setattr(trainer, "build_feature_cache", cache)
    tile = TileConfig(32, 8)
    bundle = run(data, tmp_path / "run", epochs=1, tile=tile)
    config = read_config(bundle)
    assert config.tile == tile and config.train["images"] == 9 and cached == [9 * 9]
    held = [data / name for name, _ in config.train["split"]["held_out"]]
    results = Detector.load(bundle, backend="torch", ops_backend="reference").predict(held)
    assert all(r.anomaly_map.shape == (64, 64) and r.token_mask.shape == (9, 4, 4) for r in results)
    cal = config.calibration
    assert cal.image_threshold == pytest.approx(threshold_from_normal(np.array([r.score for r in results])), rel=1e-5)
    peaks = np.array([r.anomaly_map.max() for r in results])
    assert cal.pixel_threshold == pytest.approx(threshold_from_normal(peaks), rel=1e-5)

    metrics = evaluate_bundle(bundle, data, progress=False)
    assert metrics["tile"] == {"size": 32, "overlap": 8} and "tile_note" not in metrics
    assert read_config(bundle).calibration.f1_image_threshold == metrics["f1_thresholds"]["image"]
    untiled = evaluate_bundle(bundle, data, progress=False, tile=None)
    assert untiled["tile"] is None and "not apply" in untiled["tile_note"]
    assert read_config(bundle).calibration.f1_image_threshold == metrics["f1_thresholds"]["image"]  # kept
    assert untiled["image_auroc"] != metrics["image_auroc"] or untiled["pixel_auroc"] != metrics["pixel_auroc"]
    # set-mask re-derives the guide from the training tiles and re-calibrates tiled, as training did
    from aminet_edge.training.guide import set_mask

    set_mask(bundle, [data], "nearest_normal")
    config = read_config(bundle)
    assert config.tile == tile and config.train["guide"]["training_tokens"] == 9 * 9 * 16
    scores = [r.score for r in Detector.load(bundle, backend="torch", ops_backend="reference").predict(held)]
    assert config.calibration.image_threshold == pytest.approx(threshold_from_normal(np.array(scores)), rel=1e-5)
