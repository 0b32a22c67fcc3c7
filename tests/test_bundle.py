"""Bundle config: round trip and a clear error for each kind of bad bundle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aminet_edge.bundle import SCHEMA_VERSION, BundleConfig, BundleError, Calibration, read_config, write_config
from aminet_edge.config import PRESETS, ScoreConfig

TINY = dataclasses.replace(PRESETS["tiny"], mask="adaptive")  # a bundle records the mask training chose


def make_config() -> BundleConfig:
    return BundleConfig(model=TINY, in_channels=176, score=ScoreConfig(sigma=2.0, map="reconstruction"),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        calibration=Calibration(image_threshold=1.5, pixel_threshold=0.25,
                                                normal_image_scores={"mean": 1.0, "n": 5}))


def test_round_trip(tmp_path: Path) -> None:
    write_config(tmp_path, make_config())
    back = read_config(tmp_path)
    assert back.model == TINY
    assert back.score == ScoreConfig(sigma=2.0, map="reconstruction")
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


GRAPH = {"path": "model.onnx", "sha256": "ab" * 32, "bytes": 10, "precision": "fp32", "opset": 17,
         "input_size": 128, "weights_sha256": "cd" * 32}
ENGINE = {"path": "engines/tensorrt_rtx-rtx-fp16.engine", "sha256": "ef" * 32, "bytes": 10, "backend": "tensorrt_rtx",
          "builder_version": "1.2", "target": "rtx", "precision": "fp16", "graph": "model",
          "compute_capabilities": [86], "input_size": 128, "weights_sha256": "cd" * 32}
NAN, INF = float("nan"), float("inf")


def both_sizes(d: dict, size: int) -> None:  # type: ignore[type-arg]
    d["model"]["image_size"] = size
    d["preprocess"]["image_size"] = size


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this aminet-edge"),
    (lambda d: d.pop("schema_version"), "not an aminet-edge bundle"),
    (lambda d: d.update(schema_version=0), "'schema_version' must be 1..2, got 0"),
    (lambda d: d.update(schema_version=True), "no integer 'schema_version' \\(got true\\)"),
    (lambda d: d.update(schema_version="2"), "no integer 'schema_version'"),
    (lambda d: d.pop("model"), "missing key"),
    (lambda d: d.update(calibraton={}), "'calibraton' is not a bundle config field"),
    (lambda d: d["model"].update(depth=3), "'model.depth' is not a ModelConfig field"),
    (lambda d: d["model"].update(num_heads=5), "num_heads"),
    (lambda d: both_sizes(d, 0), "'model.image_size' must be >= 1, got 0"),
    (lambda d: both_sizes(d, -16), "'model.image_size' must be >= 1, got -16"),
    (lambda d: both_sizes(d, 128.0), "'model.image_size' must be an integer"),
    (lambda d: d["model"].update(mask_lambda=NAN), "'model.mask_lambda' must be finite"),
    (lambda d: d["model"].update(mask_lambda=INF), "'model.mask_lambda' must be finite"),
    (lambda d: d["model"].update(mask_lambda="0.5"), "'model.mask_lambda' must be a number"),
    (lambda d: d["model"].update(feature_jitter="yes"), "'model.feature_jitter' must be true or false"),
    (lambda d: d["model"].update(backbone=None), "'model.backbone' must be a string"),
    (lambda d: d["model"].update(mlp_ratio=0), "'model.mlp_ratio' must be > 0"),
    (lambda d: d["score"].update(sigma=0), "'score.sigma' must be > 0, got 0"),
    (lambda d: d["score"].update(sigma=-1.0), "'score.sigma' must be > 0"),
    (lambda d: d["score"].update(sigma=NAN), "'score.sigma' must be finite"),
    (lambda d: d["score"].update(image_score="mean"), "'score.image_score' must be one of std, max"),
    (lambda d: d.update(in_channels=0), "'in_channels' must be >= 1"),
    (lambda d: d.update(in_channels="176"), "'in_channels' must be an integer"),
    (lambda d: d["preprocess"].update(image_size=64), "'preprocess.image_size' 64 differs from model.image_size"),
    (lambda d: d["preprocess"].update(std=[1, 0, 1]), "'preprocess.std\\[1\\]' must be > 0"),
    (lambda d: d["preprocess"].update(std=[1, NAN, 1]), "'preprocess.std\\[1\\]' must be finite"),
    (lambda d: d["preprocess"].update(mean=[NAN, 0.5, 0.5]), "'preprocess.mean\\[0\\]' must be finite"),
    (lambda d: d["preprocess"].update(mean=[0.5, 0.5]), "'preprocess.mean' must be 3 numbers"),
    (lambda d: d["preprocess"].update(mean=[0.5, 10, 0.5]), "'preprocess.mean\\[1\\]' must be <= 1 .*got 10"),
    (lambda d: d["preprocess"].update(mean=[-0.1, 0.5, 0.5]), "'preprocess.mean\\[0\\]' must be >= 0"),
    (lambda d: d["preprocess"].update(std=[0.2, 0.2, 255]), "'preprocess.std\\[2\\]' must be <= 1"),
    (lambda d: d["preprocess"].update(mean=[0.5, "0.5", 0.5]), "'preprocess.mean\\[1\\]' must be a number"),
    (lambda d: d["score"].update(sigma=1000.0), "'score.sigma' must be <= 64"),
    (lambda d: d["model"].update(jitter_scale=-1.0), "'model.jitter_scale' must be >= 0"),
    (lambda d: d["model"].update(embed_dim=0), "'model.embed_dim' must be >= 1"),
    # a record says what its file computes: a config edited since is refused (records before a field was
    # recorded computed its default: sigma 4, lambda 0.5)
    (lambda d: d.update(artifacts={"onnx": {"model": GRAPH}}),
     "'artifacts.onnx.model.sigma' the file computes score.sigma = 4.0 but config.json says 2.0"),
    (lambda d: d.update(artifacts={"onnx": {"model": dict(GRAPH, sigma=2.0, mask_lambda=0.25)}}),
     "'artifacts.onnx.model.mask_lambda' the file computes model.mask_lambda = 0.25 but config.json says 0.5"),
    (lambda d: d.update(artifacts={"engines": [dict(ENGINE, sigma=2.0, image_score="max")]}),
     "'artifacts.engines\\[0\\].image_score' the file computes score.image_score = 'max'"),
    (lambda d: d["calibration"].update(image_threshold="1.5"), "'calibration.image_threshold' must be a number"),
    (lambda d: d["calibration"].update(pixel_threshold=0), "'calibration.pixel_threshold' must be > 0"),
    (lambda d: d["calibration"].update(f1_image_threshold=NAN), "'calibration.f1_image_threshold' must be finite"),
    (lambda d: d["calibration"].update(image_source="magic"), "'calibration.image_source' must be one of"),
    (lambda d: d["calibration"].update(sensitivity=1.5), "'calibration.sensitivity' must be in \\[0, 1\\]"),
    (lambda d: d["calibration"]["normal_image_scores"].update(mean=NAN),
     "'calibration.normal_image_scores.mean' must be finite"),
    (lambda d: d.update(calibration=[]), "'calibration' must be a JSON object, got list"),
    (lambda d: d.update(train=[1]), "'train' must be a JSON object"),
    (lambda d: d.update(artifacts=["model.onnx"]), "'artifacts' must be a JSON object, got list"),
    (lambda d: d.update(artifacts={"graphs": {}}), "'artifacts.graphs' is not an artifact kind"),
    (lambda d: d.update(artifacts={"engines": {"a": ENGINE}}), "'artifacts.engines' must be a JSON list"),
    (lambda d: d.update(artifacts={"onnx": {"model": "model.onnx"}}), "'artifacts.onnx.model' must be a JSON object"),
    (lambda d: d.update(artifacts={"onnx": {"model": dict(GRAPH, path="../model.onnx")}}),
     "'artifacts.onnx.model.path': '../model.onnx' must be a path relative to the bundle, inside it"),
    (lambda d: d.update(artifacts={"onnx": {"model": dict(GRAPH, path="/opt/model.onnx")}}),
     "'/opt/model.onnx' must be a path relative to the bundle"),
    (lambda d: d.update(artifacts={"onnx": {"model": {k: v for k, v in GRAPH.items() if k != "sha256"}}}),
     "'artifacts.onnx.model.sha256' must be a sha256 hex digest, got null"),
    (lambda d: d.update(artifacts={"onnx": {"model": dict(GRAPH, input_size=64)}}),
     "'artifacts.onnx.model.input_size' 64 differs from model.image_size 128"),
    (lambda d: d.update(artifacts={"onnx": {"model_x": GRAPH}}), "'artifacts.onnx.model_x' is not a graph name"),
    (lambda d: d.update(artifacts={"engines": [{k: v for k, v in ENGINE.items() if k != "sha256"}]}),
     "'artifacts.engines\\[0\\].sha256' must be a sha256 hex digest"),
    (lambda d: d.update(artifacts={"engines": [dict(ENGINE, path="../../x.engine")]}), "inside it"),
    (lambda d: d.update(artifacts={"engines": [dict(ENGINE, backend="openvino")]}),
     "'artifacts.engines\\[0\\].backend' must be one of tensorrt, tensorrt_rtx"),
    (lambda d: d.update(artifacts={"weights": dict(GRAPH, path="C:/w.safetensors")}), "relative to the bundle"),
    (lambda d: both_sizes(d, 4096), "'model' inconsistent: image_size=4096 is above the maximum 1024"),
    # the training record set-mask and export re-derive the split from (a wrong type was a deep TypeError)
    (lambda d: d["train"].update(seed="x"), "'train.seed' must be an integer, got 'x'"),
    (lambda d: d["train"].update(holdout_fraction=5), "'train.holdout_fraction' must be in \\[0, 1\\), got 5"),
    (lambda d: d["train"].update(few_shot=-3), "'train.few_shot' must be >= 1, got -3"),
    (lambda d: d["train"].update(images=None), "'train.images' must be an integer, got None"),
    (lambda d: d["train"].update(split={"fit": [1, 2], "held_out": []}), "'train.split.fit' must be a list of"),
    (lambda d: d["train"].update(split={"fit": [], "held_out": [["a.png", None]]}), "'train.split.held_out' must be"),
])
def test_bad_bundles_are_named(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    """Every field is checked at read, and the one BundleError names the file and the field."""
    edit(tmp_path, change)
    with pytest.raises(BundleError, match=message) as info:
        read_config(tmp_path)
    assert "config.json" in str(info.value) and "\n" not in str(info.value)


def test_valid_records_and_negative_lambda_are_accepted(tmp_path: Path) -> None:
    """The checks refuse only what is wrong: complete records load, lambda may be 0 or negative."""
    edit(tmp_path, lambda d: (d.update(artifacts={"onnx": {"model": dict(GRAPH, sigma=2.0, mask_lambda=-0.25)},
                                                  "engines": [dict(ENGINE, sigma=2.0, mask_lambda=-0.25)]}),
                              d["model"].update(mask_lambda=-0.25)))
    config = read_config(tmp_path)
    assert config.artifacts["engines"][0]["sha256"] == ENGINE["sha256"] and config.model.mask_lambda == -0.25


@pytest.mark.parametrize("text, message", [
    ("[]", "a JSON list, expected an object"),
    ("null", "a JSON NoneType, expected an object"),
    ("3", "a JSON int"),
])
def test_config_that_is_not_an_object(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(BundleError, match=message):
        read_config(tmp_path)


def test_not_utf8_and_unwritable_configs(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"schema_version": 2, "x": "\xff\xfe"}')
    with pytest.raises(BundleError, match="not UTF-8 text"):
        read_config(tmp_path)
    bad = make_config()
    bad.score = ScoreConfig(sigma=0.0, map="reconstruction")
    with pytest.raises(BundleError, match="being written.*'score.sigma' must be > 0"):
        write_config(tmp_path / "new", bad)
    assert not (tmp_path / "new" / "config.json").exists()  # nothing written that could not load


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        read_config(tmp_path / "nope")
    with pytest.raises(BundleError, match="not an aminet-edge bundle"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_config(tmp_path)
