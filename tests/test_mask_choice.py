"""Training's default test-time mask (ModelConfig.mask / ScoreConfig.map "auto"): the nearest-normal guide and
its map from MIN_GUIDE_HELD_OUT held-out normal images on, else the paper's adaptive mask; the choice and
its reason in the log, config.json and `aminet-edge info`; explicit options and set-mask win."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from aminet_edge.bundle import read_config
from aminet_edge.cli import main
from aminet_edge.config import ModelConfig, ScoreConfig, TrainConfig
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.training import mask_choice
from aminet_edge.training.guide import set_mask
from aminet_edge.training.mask_choice import MIN_GUIDE_HELD_OUT, choose_mask
from aminet_edge.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import SMALL  # noqa: E402

GUIDE_MAP = "reconstruction+guide"
IMAGES = 2 * MIN_GUIDE_HELD_OUT  # holdout_fraction 0.5 holds out MIN_GUIDE_HELD_OUT of them, 0.475 one fewer


@pytest.mark.parametrize("mask, score_map, held, want_mask, want_map, why", [
    ("auto", "auto", MIN_GUIDE_HELD_OUT, "nearest_normal", GUIDE_MAP,
     f"default: {MIN_GUIDE_HELD_OUT} held-out normal images >= {MIN_GUIDE_HELD_OUT}"),
    ("auto", "auto", MIN_GUIDE_HELD_OUT - 1, "adaptive", "reconstruction",
     f"default: {MIN_GUIDE_HELD_OUT - 1} held-out normal images < {MIN_GUIDE_HELD_OUT}; the guide's threshold"),
    ("auto", "auto", 0, "adaptive", "reconstruction", f"default: 0 held-out normal images < {MIN_GUIDE_HELD_OUT}"),
    ("auto", "reconstruction", 66, "nearest_normal", "reconstruction", "default: 66 held-out"),
    ("auto", GUIDE_MAP, 3, "nearest_normal", GUIDE_MAP, f"explicit score map {GUIDE_MAP} needs it"),
    ("adaptive", "auto", 66, "adaptive", "reconstruction", "explicit mask"),
    ("adaptive", "reconstruction", 66, "adaptive", "reconstruction", "explicit mask"),
    ("nearest_normal", "auto", 3, "nearest_normal", GUIDE_MAP, "explicit mask"),
    ("nearest_normal", "reconstruction", 66, "nearest_normal", "reconstruction", "explicit mask"),
])
def test_choose_mask(mask: str, score_map: str, held: int, want_mask: str, want_map: str, why: str) -> None:
    model, score, reason = choose_mask(ModelConfig(mask=mask), ScoreConfig(map=score_map), held)
    assert (model.mask, score.map) == (want_mask, want_map)
    name = "nearest-normal guide" if want_mask == "nearest_normal" else "adaptive, the paper's"
    assert reason.startswith(f"{name}, score map {want_map} (") and why in reason
    assert model == dataclasses.replace(ModelConfig(), mask=want_mask)  # nothing else changes


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=IMAGES, n_test_good=1, n_test_defect=1,
                                  size=64)


def train_held(data: Path, out: Path, fraction: float, **model_fields: str) -> Path:
    return train(data, out, model=dataclasses.replace(SMALL, guide_bank_size=200, **model_fields),
                 train_cfg=TrainConfig(epochs=1, batch_size=8, lr=1e-3, holdout_fraction=fraction),
                 pretrained=False, progress=False)


def info_lines(bundle: Path) -> dict[str, str]:
    out = CliRunner().invoke(main, ["info", str(bundle)])
    assert out.exit_code == 0, out.output
    return {k.strip(): v.strip() for k, _, v in (line.partition(": ") for line in out.output.splitlines())}


@pytest.mark.parametrize("fraction, held", [(0.475, MIN_GUIDE_HELD_OUT - 1), (0.5, MIN_GUIDE_HELD_OUT)])
def test_default_at_the_minimum(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, fraction: float,
                                held: int) -> None:
    """One image below the minimum held out: the paper's mask; at it: the guide and its map, calibrated."""
    caplog.set_level(logging.INFO, logger="aminet_edge.training")
    bundle = train_held(data, tmp_path / "run", fraction)
    config = read_config(bundle)
    assert config.train["held_out"] == held
    guided = held >= MIN_GUIDE_HELD_OUT
    if guided:
        reason = (f"nearest-normal guide, score map {GUIDE_MAP} (default: {held} held-out normal images >= "
                  f"{MIN_GUIDE_HELD_OUT})")
        assert (config.model.mask, config.score.map) == ("nearest_normal", GUIDE_MAP)
        assert config.score.guide_weight > 0 and config.train["guide"]["bank_tokens"] == 200
    else:
        reason = (f"adaptive, the paper's, score map reconstruction (default: {held} held-out normal images < "
                  f"{MIN_GUIDE_HELD_OUT}; the guide's threshold (the held-out tokens' 0.95 quantile of distance) and "
                  f"its map's weight need at least {MIN_GUIDE_HELD_OUT})")
        assert (config.model.mask, config.score.map, config.score.guide_weight) == ("adaptive", "reconstruction", 0)
        assert "guide" not in config.train
    assert f"mask: {reason}" in caplog.messages
    raw = json.loads((bundle / "config.json").read_text())  # the resolved choice, never "auto"
    assert (raw["model"]["mask"], raw["score"]["map"], raw["train"]["mask_choice"]) == (
        config.model.mask, config.score.map, reason)
    info = info_lines(bundle)
    assert info["mask choice"] == reason
    assert info["mask"].startswith("nearest-normal guide: bank 200" if guided else "adaptive (clustering")


def test_explicit_mask_overrides_the_default(data: Path, tmp_path: Path) -> None:
    """With enough held-out images an explicit adaptive mask stays adaptive; set-mask switches such a bundle
    to the guide as before (its score map: the bundle's) and records that it did."""
    bundle = train_held(data, tmp_path / "run", 0.5, mask="adaptive")
    config = read_config(bundle)
    assert (config.model.mask, config.score.map) == ("adaptive", "reconstruction")
    assert config.train["mask_choice"] == "adaptive, the paper's, score map reconstruction (explicit mask)"
    set_mask(bundle, [data], "nearest_normal")
    config = read_config(bundle)
    assert (config.model.mask, config.score.map) == ("nearest_normal", "reconstruction")
    assert config.train["mask_choice"] == ("nearest-normal guide, score map reconstruction (set with `aminet-edge "
                                           "set-mask`)")
    assert info_lines(bundle)["mask choice"] == config.train["mask_choice"]


@pytest.fixture()
def small_minimum(monkeypatch: pytest.MonkeyPatch) -> int:
    """The CLI's 10 % hold-out of IMAGES images (4) is below the minimum: lower it so "auto" picks the guide."""
    monkeypatch.setattr(mask_choice, "MIN_GUIDE_HELD_OUT", 4)
    return 4


@pytest.mark.parametrize("options, want", [
    ([], ("nearest_normal", GUIDE_MAP)),
    (["--paper"], ("adaptive", "reconstruction")),
])
def test_cli_default_and_paper(data: Path, tmp_path: Path, small_minimum: int, options: list[str],
                               want: tuple[str, str]) -> None:
    out = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                    "--image-size", "64", "--embed-dim", "32", "--depth", "1", "--epochs", "1",
                                    "--guide-bank-size", "100", "--quiet", *options])
    assert out.exit_code == 0, out.output
    config = read_config(tmp_path / "run")
    assert (config.model.mask, config.score.map) == want
    assert f"mask: {config.train['mask_choice']}" in out.output
    assert ("default: 4 held-out normal images >= 4" if not options else "explicit mask") in config.train["mask_choice"]


def test_paper_refuses_another_mask(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--paper", "--mask",
                                    "nearest-normal"])
    assert out.exit_code == 2 and "--paper sets --mask adaptive --score-map reconstruction" in out.output
    assert not (tmp_path / "run").exists()
