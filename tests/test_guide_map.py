"""The "reconstruction+guide" score map (ScoreConfig.map): the reconstruction map plus guide_weight times the
nearest-normal guide's token distances, upsampled and smoothed. Checked here against independent math
(F.interpolate + scipy's gaussian_filter, float64 means), through training, set-mask, config validation
and graph records; every backend's agreement with the torch reference is in test_guide_backends (whose
bundle uses this map) and test_detector (simulated TensorRT)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter

from aminet_edge.bundle import BundleError, read_config
from aminet_edge.cli import main
from aminet_edge.config import ScoreConfig, TrainConfig
from aminet_edge.data.batches import load_batches
from aminet_edge.model.pipeline import load_pipeline
from aminet_edge.training.guide import set_mask
from aminet_edge.training.trainer import recorded_split, train

sys.path.insert(0, str(Path(__file__).parent))
from test_guide import GUIDED, data, guided  # noqa: E402,F401  (module fixtures)
from test_train import SMALL  # noqa: E402

GUIDE_MAP = "reconstruction+guide"


def train_map(data: Path, out: Path, model=GUIDED, score_map: str = GUIDE_MAP) -> Path:  # type: ignore[no-untyped-def]
    return train(data, out, model=model, train_cfg=TrainConfig(epochs=1, batch_size=4, lr=1e-3),
                 score=ScoreConfig(map=score_map), pretrained=False, progress=False)


@pytest.fixture(scope="module")
def mapped(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return train_map(data, tmp_path_factory.mktemp("mapped") / "run")


def independent_maps(bundle: Path, paths: list) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """(reconstruction maps, smoothed guide-distance maps) (N, S, S) float64 of the bundle's pipeline, the
    guide map by F.interpolate (bilinear, align_corners) and scipy's gaussian_filter in float64."""
    pipeline, config = load_pipeline(bundle)
    assert pipeline.guide is not None
    pipeline.score = dataclasses.replace(config.score, map="reconstruction", guide_weight=0.0)
    size, g = config.model.image_size, config.model.grid_size
    rec, guide = [], []
    with torch.no_grad():
        for batch in load_batches(paths, size, config.mean, config.std, 4):
            amap, _, _ = pipeline(batch)
            dist = pipeline.guide(pipeline.extractor(batch))[1].double().reshape(-1, 1, g, g)
            up = F.interpolate(dist, size=(size, size), mode="bilinear", align_corners=True)[:, 0].numpy()
            rec.append(amap.double().numpy())
            guide.append(np.stack([gaussian_filter(u, config.score.sigma) for u in up]))
    return np.concatenate(rec), np.concatenate(guide)


def test_training_calibrates_the_weight_and_the_map_adds_the_guide(mapped: Path, data: Path) -> None:  # noqa: F811
    """guide_weight = the held-out images' mean reconstruction map / mean guide map; the pipeline's map is
    reconstruction + weight * guide map (checked on the test images), its image score the std of that."""
    config = read_config(mapped)
    assert config.score.map == GUIDE_MAP and config.model.mask == "nearest_normal"
    held = recorded_split(mapped, config.train, [data])[1]
    rec, guide = independent_maps(mapped, [s.path for s in held])
    assert config.score.guide_weight == pytest.approx(rec.mean() / guide.mean(), rel=1e-4)
    tests = sorted((data / "test").rglob("*.png"))[:4]
    rec, guide = independent_maps(mapped, tests)
    pipeline, _ = load_pipeline(mapped)
    with torch.no_grad():
        batch = next(load_batches(tests, config.model.image_size, config.mean, config.std, 4))
        amap, score, _ = pipeline(batch)
    want = rec + config.score.guide_weight * guide
    np.testing.assert_allclose(amap.numpy(), want, rtol=1e-4, atol=1e-6 * want.max())
    np.testing.assert_allclose(score.numpy(), want.reshape(len(want), -1).std(1), rtol=1e-4)
    assert (config.score.guide_weight * guide).mean() > 0.1 * rec.mean()  # the term is not negligible


def test_info_and_evaluate_name_the_map(mapped: Path, data: Path, tmp_path: Path) -> None:  # noqa: F811
    out = CliRunner().invoke(main, ["info", str(mapped)])
    assert out.exit_code == 0, out.output
    weight = read_config(mapped).score.guide_weight
    assert f"reconstruction + {weight:.4g} x guide distance" in out.output
    report = tmp_path / "r.md"
    out = CliRunner().invoke(main, ["evaluate", str(mapped), str(data), "--device", "cpu", "--quiet",
                                    "--json", str(tmp_path / "m.json"), "--report", str(report)])
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["mask"], metrics["score_map"]) == ("nearest_normal", GUIDE_MAP)
    assert f"Test-time mask: nearest_normal; score map: {GUIDE_MAP}." in report.read_text()


def test_guide_map_needs_the_guide(data: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="needs the nearest-normal mask"):
        train_map(data, tmp_path / "run", model=dataclasses.replace(SMALL, mask="adaptive"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("score, mask, match", [
    (ScoreConfig(map="guide"), "nearest_normal", "map must be one of"),
    (ScoreConfig(map=GUIDE_MAP, guide_weight=1.0), "adaptive", "needs the nearest-normal mask"),
    (ScoreConfig(map=GUIDE_MAP), "nearest_normal", "calibrated guide_weight"),
    (ScoreConfig(guide_weight=0.5), "nearest_normal", "has no guide term"),
    (ScoreConfig(map=GUIDE_MAP, guide_weight=float("nan")), "nearest_normal", "finite number >= 0"),
    (ScoreConfig(map=GUIDE_MAP, guide_weight=-1.0), "nearest_normal", "finite number >= 0"),
])
def test_score_config_refuses_inconsistent_fields(score: ScoreConfig, mask: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        score.validate(mask)


@pytest.mark.parametrize("edit, match", [
    ({"guide_weight": 0.0}, "calibrated guide_weight"),
    ({"guide_weight": 0.0, "map": "reconstruction"}, None),
    ({"map": "guide"}, "score.map' must be one of"),
    ({"map": "auto"}, "score.map' is 'auto', which training resolves"),  # a bundle records the choice
    ({"guide_weight": "1"}, "score.guide_weight"),
])
def test_bundle_refuses_an_inconsistent_score(mapped: Path, tmp_path: Path, edit: dict, match: str | None) -> None:  # type: ignore[type-arg]
    bundle = Path(shutil.copytree(mapped, tmp_path / "b"))
    raw = json.loads((bundle / "config.json").read_text())
    raw["score"].update(edit)
    (bundle / "config.json").write_text(json.dumps(raw))
    if match is None:
        assert read_config(bundle).score.map == "reconstruction"  # no graphs recorded: a valid edit
        return
    with pytest.raises(BundleError, match=match):
        read_config(bundle)


def test_graph_records_name_their_score_map(mapped: Path, tmp_path: Path) -> None:
    """A graph computes the map it was exported with: config.json edited to another weight or map is
    refused; a record from before the guide map counts as the reconstruction map's."""
    from aminet_edge.export.onnx_export import export_onnx

    bundle = Path(shutil.copytree(mapped, tmp_path / "b"))
    export_onnx(bundle)
    raw = json.loads((bundle / "config.json").read_text())
    weight = raw["score"]["guide_weight"]
    for rec in raw["artifacts"]["onnx"].values():
        assert (rec["score_map"], rec["guide_weight"]) == (GUIDE_MAP, weight)
    raw["score"]["guide_weight"] = 2 * weight
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="guide_weight.*made for another configuration"):
        read_config(bundle)
    raw["score"] = {**raw["score"], "map": "reconstruction", "guide_weight": 0.0}
    for rec in raw["artifacts"]["onnx"].values():
        del rec["score_map"], rec["guide_weight"]
    (bundle / "config.json").write_text(json.dumps(raw))
    assert read_config(bundle).score.map == "reconstruction"  # old records: the reconstruction map


def test_set_mask_adds_the_map_keeping_the_guide(guided: Path, data: Path, tmp_path: Path) -> None:  # noqa: F811
    """set-mask --score-map on a guided bundle keeps its bank and threshold (same quantile and bank size)
    and calibrates the weight as training does; switching to the adaptive mask resets the map; the guide
    map with the adaptive mask is refused."""
    bundle = Path(shutil.copytree(guided, tmp_path / "b"))
    before = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    out = CliRunner().invoke(main, ["set-mask", str(bundle), str(data), "--mask", "nearest-normal", "--score-map",
                                    GUIDE_MAP, "--device", "cpu", "--quiet"])
    assert out.exit_code == 0, out.output
    assert f"score map {GUIDE_MAP}" in out.output
    after = load_file(str(bundle / read_config(bundle).artifacts["weights"]["path"]))
    assert all(torch.equal(after[k], v) for k, v in before.items())
    config = read_config(bundle)
    held = recorded_split(bundle, config.train, [data])[1]
    rec, guide = independent_maps(bundle, [s.path for s in held])
    assert config.score.map == GUIDE_MAP
    assert config.score.guide_weight == pytest.approx(rec.mean() / guide.mean(), rel=1e-4)
    with pytest.raises(ValueError, match="needs the nearest-normal mask"):
        set_mask(bundle, [data], "adaptive", device="cpu", score_map=GUIDE_MAP)
    set_mask(bundle, [data], "adaptive", device="cpu")
    back = read_config(bundle)
    assert (back.model.mask, back.score.map, back.score.guide_weight) == ("adaptive", "reconstruction", 0.0)
