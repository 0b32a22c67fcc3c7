"""Training end to end on generated data: bundle contents, repeatability, resume, few-shot, unified, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from aminet_edge.bundle import read_config
from aminet_edge.config import ModelConfig, TrainConfig
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.evaluation.evaluate import evaluate_bundle
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.model.pipeline import load_pipeline
from aminet_edge.train.cache import build_feature_cache
from aminet_edge.train.trainer import train

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
    return load_file(str(bundle / "weights.safetensors"))


def test_bundle_is_complete_and_reloads(data: Path, tmp_path: Path) -> None:
    bundle = run(data, tmp_path / "run")
    config = read_config(bundle)
    assert config.model == SMALL and config.in_channels == 176
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


def test_fixed_seed_repeats_and_resume_matches(data: Path, tmp_path: Path) -> None:
    a = weights(run(data, tmp_path / "a"))
    b = weights(run(data, tmp_path / "b"))
    run(data, tmp_path / "c", epochs=1)
    c = weights(run(data, tmp_path / "c", epochs=2, resume=True))
    assert read_config(tmp_path / "c").train["history"][0]["epoch"] == 1
    for key in a:
        assert np.array_equal(a[key], b[key]), key
        assert np.array_equal(a[key], c[key]), key


def test_few_shot_and_unified(data: Path, tmp_path: Path) -> None:
    few = read_config(run(data, tmp_path / "few", epochs=1, few_shot=3))
    assert few.train["images"] == 3 and few.train["held_out"] == 0
    assert few.calibration.normal_image_scores["held_out"] is False
    both = read_config(run([data, data], tmp_path / "uni", epochs=1))
    assert both.train["images"] + both.train["held_out"] == 24


def test_disk_cache_is_reused(data: Path, tmp_path: Path) -> None:
    ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    paths = sorted(str(p) for p in (data / "train" / "good").glob("*.png"))[:3]
    first = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float16", tmp_path, progress=False)
    calls = []
    ext.register_forward_hook(lambda *a: calls.append(1))
    second = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float16", tmp_path, progress=False)
    assert not calls and second.dtype == torch.float16 and torch.equal(first, second)
    memory = build_feature_cache(ext, paths, 64, ext.mean, ext.std, "float32", None, progress=False)
    torch.testing.assert_close(memory, first.float(), rtol=1e-3, atol=1e-3)  # fp16 rounding


def test_bad_data_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known data layout"):
        run(tmp_path / "empty", tmp_path / "out")
