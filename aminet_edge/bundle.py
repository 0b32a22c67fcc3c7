"""The bundle: a directory with `config.json` (versioned schema) and `weights.safetensors`.

A bundle is everything a deployed detector needs: backbone and AMI-Net weights, preprocessing, score
settings, calibrated thresholds, and (after export) ONNX graphs and engines. This module is torch-free:
the edge runtime reads bundles with numpy only. Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aminet_edge.config import ModelConfig, ScoreConfig, from_dict, to_dict

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


class BundleError(ValueError):
    """A bundle directory is missing, incomplete, or written by an incompatible version."""


@dataclass
class Calibration:
    """Score statistics and decision thresholds, all in raw score units.

    image_threshold: the image score above which an image is anomalous; pixel_threshold: the map value
    above which a pixel is in the binary mask. `*_source` says how each was chosen: "normal" (from
    held-out normal images only) or "f1" (F1-optimal on labelled images).
    """

    image_threshold: float
    pixel_threshold: float
    image_source: str = "normal"
    pixel_source: str = "normal"
    normal_image_scores: dict[str, float] = field(default_factory=dict)  # mean, std, min, max, n
    normal_pixel_stats: dict[str, float] = field(default_factory=dict)  # mean, std, max, q999
    f1_image_threshold: float | None = None
    f1_pixel_threshold: float | None = None


@dataclass
class BundleConfig:
    """Contents of config.json (schema version SCHEMA_VERSION)."""

    model: ModelConfig
    in_channels: int
    score: ScoreConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    calibration: Calibration | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig as trained, plus data and timing
    backbone_source: str = ""  # where the backbone weights came from
    artifacts: dict[str, Any] = field(default_factory=dict)  # onnx graphs and engines, filled by export
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "aminet_edge_version": self.version,
            "model": to_dict(self.model),
            "in_channels": self.in_channels,
            "score": to_dict(self.score),
            "preprocess": {"image_size": self.model.image_size, "mean": list(self.mean), "std": list(self.std)},
            "calibration": None if self.calibration is None else to_dict(self.calibration),
            "train": self.train,
            "backbone_source": self.backbone_source,
            "artifacts": self.artifacts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = CONFIG_FILE) -> "BundleConfig":
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{where}: no integer 'schema_version'; not an aminet-edge bundle")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version} is newer than this aminet-edge understands "
                f"({SCHEMA_VERSION}); upgrade aminet-edge (bundle written by {data.get('aminet_edge_version')})")
        missing = [k for k in ("model", "in_channels", "score", "preprocess") if k not in data]
        if missing:
            raise BundleError(f"{where}: missing key(s) {', '.join(missing)}")
        try:
            model = from_dict(ModelConfig, data["model"])
            model.validate()
            score = from_dict(ScoreConfig, data["score"])
            pre = data["preprocess"]
            if pre["image_size"] != model.image_size:
                raise ValueError(f"preprocess.image_size {pre['image_size']} != model.image_size {model.image_size}")
            mean, std = tuple(float(v) for v in pre["mean"]), tuple(float(v) for v in pre["std"])
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ValueError("preprocess mean/std must be 3 values each, std > 0")
            cal = data.get("calibration")
            calibration = None if cal is None else from_dict(Calibration, cal)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: invalid bundle config: {exc}") from exc
        return cls(model=model, in_channels=int(data["in_channels"]), score=score,
                   mean=mean, std=std, calibration=calibration,  # type: ignore[arg-type]
                   train=data.get("train", {}), backbone_source=data.get("backbone_source", ""),
                   artifacts=data.get("artifacts", {}), version=data.get("aminet_edge_version", ""))


def read_config(bundle: str | Path) -> BundleConfig:
    """Read and validate `bundle/config.json`; BundleError names the file and the problem."""
    path = Path(bundle) / CONFIG_FILE
    if not Path(bundle).is_dir():
        raise BundleError(f"bundle directory not found: {bundle}")
    if not path.is_file():
        raise BundleError(f"{path} not found: not an aminet-edge bundle (train one with `aminet-edge train`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return BundleConfig.from_json(data, str(path))


def write_config(bundle: str | Path, config: BundleConfig) -> Path:
    """Write `bundle/config.json` atomically (write then rename)."""
    from aminet_edge import __version__

    config.version = __version__
    path = Path(bundle) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_json(), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def weights_path(bundle: str | Path) -> Path:
    """Path of the bundle's weights; BundleError if absent."""
    path = Path(bundle) / WEIGHTS_FILE
    if not path.is_file():
        raise BundleError(f"{path} not found: the bundle has no weights")
    return path
