"""Bundle config: round trip and a clear error for each kind of bad bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aminet_edge.bundle import SCHEMA_VERSION, BundleConfig, BundleError, Calibration, read_config, write_config
from aminet_edge.config import PRESETS, ScoreConfig


def make_config() -> BundleConfig:
    return BundleConfig(model=PRESETS["tiny"], in_channels=176, score=ScoreConfig(sigma=2.0),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        calibration=Calibration(image_threshold=1.5, pixel_threshold=0.25,
                                                normal_image_scores={"mean": 1.0, "n": 5}))


def test_round_trip(tmp_path: Path) -> None:
    write_config(tmp_path, make_config())
    back = read_config(tmp_path)
    assert back.model == PRESETS["tiny"]
    assert back.score == ScoreConfig(sigma=2.0)
    assert back.calibration == make_config().calibration
    assert back.mean == (0.5, 0.5, 0.5) and back.in_channels == 176
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["aminet_edge_version"]


def edit(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    write_config(tmp_path, make_config())
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this aminet-edge"),
    (lambda d: d.pop("schema_version"), "not an aminet-edge bundle"),
    (lambda d: d.pop("model"), "missing key"),
    (lambda d: d["model"].update(depth=3), "unknown ModelConfig field"),
    (lambda d: d["model"].update(num_heads=5), "num_heads"),
    (lambda d: d["preprocess"].update(image_size=64), "preprocess.image_size"),
    (lambda d: d["preprocess"].update(std=[1, 0, 1]), "std > 0"),
])
def test_bad_bundles_are_named(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    edit(tmp_path, change)
    with pytest.raises(BundleError, match=message) as info:
        read_config(tmp_path)
    assert "config.json" in str(info.value)


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        read_config(tmp_path / "nope")
    with pytest.raises(BundleError, match="not an aminet-edge bundle"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_config(tmp_path)
