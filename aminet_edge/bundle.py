"""The bundle: one directory a deployed detector needs, its layout, schema and every check made on it.

Layout (all paths in config.json are relative to the bundle and must stay inside it):
    config.json                         schema SCHEMA_VERSION: model, preprocess, score, calibration, artifacts,
                                        tile (absent or null: untiled; config.TileConfig)
    weights-<sha256[:16]>.safetensors   backbone + AMI-Net weights, named by their content (weights_name;
                                        bundles written before content-addressed weights: weights.safetensors)
    model[_a|_b][_fp16|_int8].onnx      exported graphs (onnx_name), after `aminet-edge export`
    model_int8_static.onnx              OpenVINO's int8 graph (`export --precision int8 --calibration-data`)
    engines/<backend>-<target>-<precision>[-model_a|-model_b].engine   TensorRT engines (engine_name)
    cache/                              the runtime's caches, not artifacts (never recorded or verified):
                                        openvino/ compiled models, auto_backend.json `auto`'s measured choice

config.json "artifacts" records every file: {"weights": record, "onnx": {key: record}, "engines": [record]};
each record has "path", "sha256" (hex, of the file), "bytes", and graphs and engines also the
"weights_sha256" of the weights they were made from; an int8 graph's record may carry "validation"
({"accepted": bool, ...figures}: int8_accepted). What is checked, and when:
- at read (read_config): every field's type and range, with one BundleError naming the field
  (validate_config); records' paths inside the bundle; graphs and engines of this bundle's input size.
- at use (weights_file, graph_file, engine_records + verify_record): the file is recorded (a file found
  on disk but not recorded is refused: it may be left from an earlier training), readable (the real
  OSError is reported: permission, symlink loop), of its recorded size and sha256 (hashed once per
  load, streamed), and made from the current weights.
- at use of a guided bundle's graph (graph_record): its record says "guide_bank": "weights" (the bank
  lies in the weights file only; graphs exported before that held it and are refused: guide_bank_problem).
- `verify_bundle`: all of the above for every recorded file (`aminet-edge info RUN --verify`).
Schema 1 bundles (aminet-edge 0.1 before checksums) record no sha256: their weights load with a
warning (nothing to check them against), their graphs and engines are refused until re-exported
(`aminet-edge export RUN` records the weights' checksum and writes schema SCHEMA_VERSION).

Writing (`write_config`, `install_artifacts`, `owned_bundle` + `remove_recorded`): every file is written
atomically (aminet_edge.files) and config.json last, so that a crash at any instant leaves a loadable
bundle: new weights get a new (content-addressed) name and the old files are deleted only after the new
config.json is in place; a recorded graph or engine replaced by other content is first un-recorded. Only
files a bundle's config.json records are ever deleted, and only inside the bundle (no symbolic link is
followed); a folder holding other files is not a bundle and is never written into (`owned_bundle`).

Export, training and the runtime all read, write and resolve bundle files through this module. It is
torch-free (the edge runtime uses it) and unpickles nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from aminet_edge.config import (AUTO, MASKS, MAX_SIGMA, PAPER_MAP, PAPER_MASK, PIXEL_RANGE, SCORE_MAPS, ModelConfig,
                                ScoreConfig, TileConfig, to_dict)
from aminet_edge.files import TEMP_NAME, atomic_write_text, install, remove_owned

SCHEMA_VERSION = 2  # 2: sha256 of every file in "artifacts" (weights included); 1: no checksums
LEGACY_SCHEMA = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"  # schema 1 bundles' weights (newer ones: weights_name)
ENGINE_DIR = "engines"
GRAPHS = ("model", "model_a", "model_b")  # the single graph and the split halves
# of the exported graphs. int8: the inpainting MatMuls quantised dynamically (onnxruntime);
# int8_static: backbone and transformers quantised with scales calibrated on normal images (QDQ, OpenVINO)
PRECISIONS = ("fp32", "fp16", "int8", "int8_static")
ENGINE_BACKENDS = ("tensorrt", "tensorrt_rtx")
ENGINE_PRECISIONS = ("fp32", "fp16")
REEXPORT = "re-export the bundle: `aminet-edge export {bundle}` (and rebuild its engines)"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20

log = logging.getLogger("aminet_edge.bundle")


class BundleError(ValueError):
    """A bundle is missing, incomplete, inconsistent, tampered with, or written by an incompatible version."""


def weights_name(sha256: str) -> str:
    """File name of weights whose sha256 (hex) is `sha256`: a new file for new weights, so that the
    previous weights stay in place until the config.json recording the new ones has replaced the old."""
    return f"weights-{sha256[:16]}.safetensors"


def onnx_name(part: str, precision: str) -> str:
    """File name of graph `part` ("model", "model_a", "model_b") at `precision` ("fp32", "fp16", "int8")."""
    return f"{part}.onnx" if precision == "fp32" else f"{part}_{precision}.onnx"


def graph_key(part: str, precision: str) -> str:
    """Key of a graph in artifacts["onnx"]: "<part>" (fp32) or "<part>_<precision>"."""
    return onnx_name(part, precision).removesuffix(".onnx")


def engine_name(backend: str, target: str, precision: str, graph: str = "model") -> str:
    """Default engine file name: `<backend>-<target>-<precision>[-model_a|-model_b].engine`."""
    return f"{backend}-{target}-{precision}" + ("" if graph == "model" else f"-{graph}") + ".engine"


@dataclass
class Calibration:
    """Score statistics and decision thresholds, all in raw score units.

    image_threshold: the image score above which an image is anomalous; pixel_threshold: the map value
    above which a pixel is in the binary mask. `*_source` says how each was chosen: "normal" (from
    held-out normal images only) or "f1" (F1-optimal on labelled images). sensitivity: the operating point
    set on the line (`write_sensitivity`, from the station's live view), in [0, 1]: the station loads a camera
    with it unless its config sets one; `Detector.load` and the C runtime take theirs as an argument (0.5).
    """

    image_threshold: float
    pixel_threshold: float
    image_source: str = "normal"
    pixel_source: str = "normal"
    normal_image_scores: dict[str, float] = field(default_factory=dict)  # mean, std, min, max, n
    normal_pixel_stats: dict[str, float] = field(default_factory=dict)  # mean, std, max, q999
    f1_image_threshold: float | None = None
    f1_pixel_threshold: float | None = None
    sensitivity: float = 0.5


@dataclass
class BundleConfig:
    """Contents of config.json. schema_version: what it was read as (a schema 1 bundle stays 1 until
    re-exported); new configs are SCHEMA_VERSION."""

    model: ModelConfig
    in_channels: int
    score: ScoreConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    calibration: Calibration | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig as trained, plus data and timing
    backbone_source: str = ""  # where the backbone weights came from
    artifacts: dict[str, Any] = field(default_factory=dict)  # weights, onnx graphs, engines (module docstring)
    tile: TileConfig | None = None  # native-resolution tiling (config.TileConfig); None: whole image resized
    version: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def legacy(self) -> bool:
        """A schema 1 bundle: no checksums recorded."""
        return self.schema_version < SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """config.json's content; "tile" only when set, so untiled bundles read in earlier versions too."""
        return {
            "schema_version": self.schema_version,
            "aminet_edge_version": self.version,
            "model": to_dict(self.model),
            "in_channels": self.in_channels,
            "score": to_dict(self.score),
            "preprocess": {"image_size": self.model.image_size, "mean": list(self.mean), "std": list(self.std)},
            "calibration": None if self.calibration is None else to_dict(self.calibration),
            "train": self.train,
            "backbone_source": self.backbone_source,
            "artifacts": self.artifacts,
        } | ({} if self.tile is None else {"tile": to_dict(self.tile)})

    @classmethod
    def from_json(cls, data: Any, where: str = CONFIG_FILE) -> "BundleConfig":
        """Parse and validate config.json's content; BundleError names `where` and the field."""
        return validate_config(data, where)


# ---- field validation ---------------------------------------------------------------------------------
def _fail(where: str, name: str, problem: str) -> BundleError:
    return BundleError(f"{where}: field '{name}' {problem}")


def _number(where: str, name: str, value: Any, positive: bool = False, minimum: float | None = None) -> float:
    """A finite JSON number (bool refused); positive: > 0; minimum: >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(where, name, f"must be finite, got {value!r}")
    if positive and not value > 0:
        raise _fail(where, name, f"must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, name, f"must be >= {minimum}, got {value!r}")
    return float(value)


def _integer(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, name, f"must be >= {minimum}, got {value!r}")
    return value


def _text(where: str, name: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(where, name, f"must be a string, got {value!r}")
    if choices is not None and value not in choices:
        raise _fail(where, name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _resolved(where: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """`_text` for model.mask / score.map, with the fix for "auto": training chooses, a bundle records the choice."""
    if value == AUTO:
        raise _fail(where, name, f"is {AUTO!r}, which training resolves (aminet_edge.training.mask_choice); a "
                    f"bundle records one of {', '.join(choices)}")
    return _text(where, name, value, choices)


def _object(where: str, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, name, f"must be a JSON object, got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields(cls: type, data: Any, where: str, section: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` (a JSON object) as keyword arguments of dataclass `cls`, each value type-checked by its
    annotation; unknown and missing required keys refused."""
    data = _object(where, section, data)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise _fail(where, f"{section}.{unknown[0]}", f"is not a {cls.__name__} field (known: {', '.join(names)})")
    missing = [k for k in required if k not in data]
    if missing:
        raise _fail(where, f"{section}.{missing[0]}", "is missing")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name, kind = f"{section}.{key}", str(names[key].type)
        if kind == "int":
            out[key] = _integer(where, name, value)
        elif kind == "float":
            out[key] = _number(where, name, value)
        elif kind == "float | None":
            out[key] = None if value is None else _number(where, name, value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise _fail(where, name, f"must be true or false, got {value!r}")
            out[key] = value
        elif kind == "str":
            out[key] = _text(where, name, value)
        elif kind == "ImageScore":
            out[key] = _text(where, name, value, ("std", "max"))
        elif kind.startswith("dict["):
            out[key] = _object(where, name, value)
        else:  # pragma: no cover - a new field type must be added above
            raise TypeError(f"no JSON check for {cls.__name__}.{key}: {kind}")
    return out


def _model(data: Any, where: str) -> ModelConfig:
    kwargs = _fields(ModelConfig, data, where, "model", required=("backbone", "image_size"))
    for name in ("image_size", "patch_size", "embed_dim", "num_heads", "inpaint_depth", "aggregation_depth",
                 "num_clusters", "guide_bank_size"):
        if name in kwargs and kwargs[name] < 1:
            raise _fail(where, f"model.{name}", f"must be >= 1, got {kwargs[name]}")
    if "mlp_ratio" in kwargs:
        _number(where, "model.mlp_ratio", kwargs["mlp_ratio"], positive=True)
    # a bundle records the mask training chose (never "auto"); one that records none computes the paper's
    kwargs["mask"] = _resolved(where, "model.mask", kwargs.get("mask", PAPER_MASK), MASKS)
    kwargs.setdefault("guide_dims", 0)  # a bundle that records none searched every channel (no projection)
    if kwargs["guide_dims"] < 0:
        raise _fail(where, "model.guide_dims", f"must be >= 0 (0: every channel), got {kwargs['guide_dims']}")
    if "guide_quantile" in kwargs:
        _number(where, "model.guide_quantile", kwargs["guide_quantile"], positive=True)
    if "jitter_scale" in kwargs:
        _number(where, "model.jitter_scale", kwargs["jitter_scale"], minimum=0.0)
    if not kwargs["backbone"]:
        raise _fail(where, "model.backbone", "must name a backbone, got ''")
    model = ModelConfig(**kwargs)
    try:
        model.validate()
    except ValueError as exc:
        raise BundleError(f"{where}: field 'model' inconsistent: {exc}") from exc
    return model


def _score(data: Any, where: str, mask: str) -> ScoreConfig:
    kwargs = _fields(ScoreConfig, data, where, "score")
    kwargs["map"] = _resolved(where, "score.map", kwargs.get("map", PAPER_MAP), SCORE_MAPS)  # as model.mask
    score = ScoreConfig(**kwargs)
    # sigma 0 would make the reference's Gaussian a no-op while the C++/CUDA kernels divide by it
    if _number(where, "score.sigma", score.sigma, positive=True) > MAX_SIGMA:
        raise _fail(where, "score.sigma", f"must be <= {MAX_SIGMA:g} (pixels), got {score.sigma!r}")
    try:
        score.validate(mask)
    except ValueError as exc:
        raise BundleError(f"{where}: field 'score' inconsistent: {exc}") from exc
    return score


def _tile(data: Any, where: str) -> TileConfig | None:
    if data is None:
        return None
    tile = TileConfig(**_fields(TileConfig, data, where, "tile", required=("size",)))
    try:
        tile.validate()
    except ValueError as exc:
        raise BundleError(f"{where}: field 'tile' inconsistent: {exc}") from exc
    return tile


# What a graph or engine computes beyond its weights and input size: the config fields baked into it,
# as its record names them. Records written before a field was recorded computed its default then.
COMPUTES = {"mask": ("model", "mask"), "mask_lambda": ("model", "mask_lambda"), "score_map": ("score", "map"),
            "guide_weight": ("score", "guide_weight"), "sigma": ("score", "sigma"),
            "image_score": ("score", "image_score")}
_COMPUTES_BEFORE = {key: getattr({"model": ModelConfig(mask=PAPER_MASK), "score": ScoreConfig(map=PAPER_MAP)}[part],
                                  name) for key, (part, name) in COMPUTES.items()}


# Where a guided bundle's graphs find the nearest-normal guide's bank: in the weights file, its only copy
# (the single graph takes it as an input, model_a outputs the tokens it is compared with; graph_io). Graph
# records of guided bundles say so; older ones (no such field) hold the bank as a constant of the graph
# and are refused at use (guide_bank_problem), to be re-exported.
GUIDE_BANK_RECORD = ("guide_bank", "weights")


def graph_layout(config: BundleConfig) -> dict[str, str]:
    """The record fields stating a graph's layout beyond what it computes: {"guide_bank": "weights"} for a
    guided bundle's graphs (GUIDE_BANK_RECORD), else none."""
    key, value = GUIDE_BANK_RECORD
    return {key: value} if config.model.mask == "nearest_normal" else {}


def guide_bank_problem(config: BundleConfig, record: dict[str, Any]) -> str | None:
    """Why graph `record` cannot run with this aminet-edge (None when it can): a guided bundle's graph
    exported before the bank moved out of the graphs holds it as a constant and lacks the I/O the
    runtime feeds (graph_io)."""
    key, value = GUIDE_BANK_RECORD
    if config.model.mask != "nearest_normal" or record.get(key) == value:
        return None
    return ("this graph was exported by an older aminet-edge that put the nearest-normal guide's bank inside "
            "the graph (bundles keep it once, in their weights file, now)")


def graph_computes(config: BundleConfig) -> dict[str, Any]:
    """The record fields (COMPUTES) of a graph or engine made from `config`; a config that differs from
    a file's record is refused at read (every backend alike): the file computes something else."""
    return {key: getattr(getattr(config, part), name) for key, (part, name) in COMPUTES.items()}


def _calibration(data: Any, where: str) -> Calibration | None:
    if data is None:
        return None
    kwargs = _fields(Calibration, data, where, "calibration", required=("image_threshold", "pixel_threshold"))
    cal = Calibration(**kwargs)
    for name in ("image_threshold", "pixel_threshold", "f1_image_threshold", "f1_pixel_threshold"):
        value = getattr(cal, name)
        if value is not None:
            _number(where, f"calibration.{name}", value, positive=True)
    for name in ("image_source", "pixel_source"):
        _text(where, f"calibration.{name}", getattr(cal, name), ("normal", "f1"))
    if not 0.0 <= cal.sensitivity <= 1.0:
        raise _fail(where, "calibration.sensitivity", f"must be in [0, 1], got {cal.sensitivity!r}")
    for name in ("normal_image_scores", "normal_pixel_stats"):
        for k, v in getattr(cal, name).items():
            if not isinstance(v, bool):  # held_out is a flag; the rest are finite numbers
                _number(where, f"calibration.{name}.{k}", v)
    return cal


def _preprocess(data: Any, where: str, model: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = _object(where, "preprocess", data)
    unknown = sorted(set(pre) - {"image_size", "mean", "std"})
    if unknown:
        raise _fail(where, f"preprocess.{unknown[0]}", "is not a preprocess field (image_size, mean, std)")
    size = _integer(where, "preprocess.image_size", pre.get("image_size"))
    if size != model.image_size:
        raise _fail(where, "preprocess.image_size", f"{size} differs from model.image_size {model.image_size}")
    out = []
    for name in ("mean", "std"):
        values = pre.get(name)
        if not isinstance(values, list) or len(values) != 3:
            raise _fail(where, f"preprocess.{name}", f"must be 3 numbers (R, G, B), got {_short(values)}")
        checked = []
        for i, v in enumerate(values):  # on pixel values scaled to [0, 1]: mean in [0, 1], std in (0, 1]
            v = _number(where, f"preprocess.{name}[{i}]", v, positive=name == "std", minimum=PIXEL_RANGE[0])
            if v > PIXEL_RANGE[1]:
                raise _fail(where, f"preprocess.{name}[{i}]", f"must be <= {PIXEL_RANGE[1]:g} (pixel values are "
                            f"scaled to [0, 1] before normalising), got {v!r}")
            checked.append(v)
        out.append(tuple(checked))
    return out[0], out[1]


def validate_config(data: Any, where: str = CONFIG_FILE) -> BundleConfig:
    """config.json's parsed JSON -> BundleConfig, every field checked; BundleError names the field."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: not an aminet-edge bundle config (a JSON {type(data).__name__}, "
                          "expected an object)")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"{where}: no integer 'schema_version' (got {_short(version)}); not an aminet-edge bundle")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema_version {version} is newer than this aminet-edge understands "
            f"({SCHEMA_VERSION}); upgrade aminet-edge (bundle written by {data.get('aminet_edge_version')})")
    if version < LEGACY_SCHEMA:
        raise _fail(where, "schema_version", f"must be {LEGACY_SCHEMA}..{SCHEMA_VERSION}, got {version}")
    known = {"schema_version", "aminet_edge_version", "model", "in_channels", "score", "preprocess",
             "calibration", "train", "backbone_source", "artifacts", "tile"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, unknown[0], "is not a bundle config field (a typo? known: " + ", ".join(sorted(known)) + ")")
    missing = [k for k in ("model", "in_channels", "score", "preprocess") if k not in data]
    if missing:
        raise BundleError(f"{where}: missing key(s) {', '.join(missing)}")
    model = _model(data["model"], where)
    mean, std = _preprocess(data["preprocess"], where, model)
    config = BundleConfig(
        model=model, in_channels=_integer(where, "in_channels", data["in_channels"], minimum=1),
        score=_score(data["score"], where, model.mask), mean=mean, std=std,  # type: ignore[arg-type]
        calibration=_calibration(data.get("calibration"), where),
        train=_object(where, "train", data.get("train", {})),
        backbone_source=_text(where, "backbone_source", data.get("backbone_source", "")),
        artifacts=_object(where, "artifacts", data.get("artifacts", {})), tile=_tile(data.get("tile"), where),
        version=_text(where, "aminet_edge_version", data.get("aminet_edge_version", "")), schema_version=version)
    _check_train(config.train, where)
    _check_guide(config, where)
    if not config.legacy:
        _check_artifacts(config, where)
    return config


def _check_train(train: dict[str, Any], where: str) -> None:
    """The training record's fields that set-mask and export re-derive the training split from (seed,
    holdout_fraction, few_shot, images, held_out, split: {"fit", "held_out": [[name, sha256], ...]}), where
    present: their types and ranges."""
    if "seed" in train:
        _integer(where, "train.seed", train["seed"])
    if "holdout_fraction" in train and not 0 <= _number(where, "train.holdout_fraction", train["holdout_fraction"]) < 1:
        raise _fail(where, "train.holdout_fraction", f"must be in [0, 1), got {train['holdout_fraction']!r}")
    if train.get("few_shot") is not None:
        _integer(where, "train.few_shot", train["few_shot"], minimum=1)
    for name in ("images", "held_out"):
        if name in train:
            _integer(where, f"train.{name}", train[name], minimum=0)
    if "split" in train:
        split = _object(where, "train.split", train["split"])
        for part in ("fit", "held_out"):
            entries = split.get(part)
            if not isinstance(entries, list) or not all(
                    isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and _HEX64.fullmatch(str(e[1]))
                    for e in entries):
                raise _fail(where, f"train.split.{part}", "must be a list of [image name, sha256 hex digest] "
                            f"pairs, got {_short(entries)}")


def _check_guide(config: BundleConfig, where: str) -> None:
    """model.guide_quantile / guide_bank_size against the nearest-normal guide the weights hold (as
    train.guide records it): an edit would describe a guide the bundle does not have."""
    guide = config.train.get("guide")
    if config.model.mask != "nearest_normal" or not isinstance(guide, dict):
        return
    fix = "rebuild the guide with `aminet-edge set-mask RUN DATA --mask nearest-normal` and the new value, or " \
          "put the value back"
    if "quantile" in guide and guide["quantile"] != config.model.guide_quantile:
        raise _fail(where, "model.guide_quantile", f"is {config.model.guide_quantile} but the stored guide's threshold "
                    f"is the held-out quantile {guide['quantile']} (train.guide); {fix}")
    dims, channels = guide.get("dims"), guide.get("channels")
    if isinstance(dims, int) and isinstance(channels, int):
        want = config.model.guide_columns(channels)
        if dims != want:
            raise _fail(where, "model.guide_dims", f"is {config.model.guide_dims} but the stored guide's tokens have "
                        f"{dims} of {channels} dimensions (train.guide); {fix}")
    tokens, bank = guide.get("training_tokens"), guide.get("bank_tokens")
    if isinstance(tokens, int) and isinstance(bank, int) and bank != min(config.model.guide_bank_size, tokens):
        raise _fail(where, "model.guide_bank_size", f"is {config.model.guide_bank_size} but the stored guide's bank "
                    f"holds {bank} of {tokens} training tokens (train.guide); {fix}")


def _record(where: str, name: str, record: Any, fields: dict[str, tuple[str, ...] | type]) -> dict[str, Any]:
    """Check one artifact record: path inside the bundle, sha256, bytes, plus `fields` (choices or type)."""
    record = _object(where, name, record)
    path = _text(where, f"{name}.path", record.get("path"))
    inside_path(path, f"{where}: field '{name}.path'")
    if not _HEX64.fullmatch(str(record.get("sha256"))):
        raise _fail(where, f"{name}.sha256", f"must be a sha256 hex digest, got {_short(record.get('sha256'))} "
                                             "(every file of a bundle is checksummed)")
    _integer(where, f"{name}.bytes", record.get("bytes"), minimum=0)
    for key, kind in fields.items():
        value = record.get(key)
        if isinstance(kind, tuple):
            _text(where, f"{name}.{key}", value, kind)
        elif kind is int:
            _integer(where, f"{name}.{key}", value)
        elif kind is str:
            _text(where, f"{name}.{key}", value)
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise _fail(where, f"{name}.{key}", f"must be a list of integers, got {_short(value)}")
    return record


def _check_artifacts(config: BundleConfig, where: str) -> None:
    artifacts = config.artifacts
    unknown = sorted(set(artifacts) - {"weights", "onnx", "engines"})
    if unknown:
        raise _fail(where, f"artifacts.{unknown[0]}", "is not an artifact kind (weights, onnx, engines)")
    if "weights" in artifacts:
        _record(where, "artifacts.weights", artifacts["weights"], {})
    derived = {"weights_sha256": str, "input_size": int}
    for key, rec in _object(where, "artifacts.onnx", artifacts.get("onnx", {})).items():
        valid = {graph_key(g, p) for g in GRAPHS for p in PRECISIONS}
        if key not in valid:
            raise _fail(where, f"artifacts.onnx.{key}", f"is not a graph name ({', '.join(sorted(valid))})")
        _record(where, f"artifacts.onnx.{key}", rec, {"precision": PRECISIONS, **derived})
    engines = artifacts.get("engines", [])
    if not isinstance(engines, list):
        raise _fail(where, "artifacts.engines", f"must be a JSON list of engine records, got {type(engines).__name__}")
    for i, rec in enumerate(engines):
        _record(where, f"artifacts.engines[{i}]", rec, {
            "backend": ENGINE_BACKENDS, "precision": ENGINE_PRECISIONS, "graph": GRAPHS, "target": str,
            "builder_version": str, "compute_capabilities": list, **derived})
    # one file, one kind of record (else the check of one stands for the other): only graphs share a file
    # (a split int8 export records the fp32 model_a as model_a_int8 too), with one content
    seen: dict[PurePosixPath, tuple[str, dict[str, Any]]] = {}
    for name, rec in [*((("artifacts.weights", artifacts["weights"]),) if "weights" in artifacts else ()),
                      *(("artifacts.onnx." + k, r) for k, r in artifacts.get("onnx", {}).items()),
                      *((f"artifacts.engines[{i}]", r) for i, r in enumerate(engines))]:
        first, other = seen.setdefault(PurePosixPath(rec["path"]), (name, rec))
        graphs = first.startswith("artifacts.onnx.") and name.startswith("artifacts.onnx.")
        if first != name and not (graphs and other["sha256"] == rec["sha256"]):
            raise _fail(where, f"{name}.path", f"{rec['path']!r} is the file {first} records: each file of a "
                        "bundle has one record; " + REEXPORT.format(bundle="RUN"))
    for name, rec in [*(("artifacts.onnx." + k, r) for k, r in artifacts.get("onnx", {}).items()),
                      *((f"artifacts.engines[{i}]", r) for i, r in enumerate(engines))]:
        if rec["input_size"] != config.model.image_size:
            raise _fail(where, f"{name}.input_size", f"{rec['input_size']} differs from model.image_size "
                        f"{config.model.image_size}: the file was made for another configuration; "
                        + REEXPORT.format(bundle="RUN"))
        expected = graph_computes(config)
        for key, value in expected.items():
            made = rec.get(key, _COMPUTES_BEFORE[key])
            if made != value:
                part, field_name = COMPUTES[key]
                raise _fail(where, f"{name}.{key}", f"the file computes {part}.{field_name} = {made!r} but config.json "
                            f"says {value!r}: it was made for another configuration (config.json edited?); put "
                            "the value back, or " + REEXPORT.format(bundle="RUN"))


# ---- reading and writing config.json ------------------------------------------------------------------
def _os_problem(exc: OSError) -> str:
    """The real reason an OSError gives, in words a user can act on."""
    if isinstance(exc, PermissionError):
        return "permission denied (check the file's owner and mode; the process must be able to read it)"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot be read ({exc.strerror or exc})"


def read_config(bundle: str | Path) -> BundleConfig:
    """Read and validate `bundle/config.json`; BundleError names the file and the problem."""
    root = Path(bundle)
    path = root / CONFIG_FILE
    try:
        os.stat(root)
    except OSError as exc:
        raise BundleError(f"bundle directory {bundle}: {_os_problem(exc)}") from exc
    if not root.is_dir():
        raise BundleError(f"bundle directory {bundle}: not a directory")
    if path.is_symlink():
        artifact_path(root, CONFIG_FILE)  # a link to a config.json outside the bundle is refused
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path} not found: not an aminet-edge bundle (train one with `aminet-edge train`)") from exc
    except OSError as exc:
        raise BundleError(f"{path}: {_os_problem(exc)}") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); not a bundle config") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return validate_config(data, str(path))


def write_config(bundle: str | Path, config: BundleConfig) -> Path:
    """Write `bundle/config.json` atomically (write then rename) after validating what is written."""
    from aminet_edge import __version__

    config.version = __version__
    path = Path(bundle) / CONFIG_FILE
    data = config.to_json()
    validate_config(json.loads(json.dumps(data)), f"{path} (being written)")  # never write what cannot load
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_sensitivity(bundle: str | Path, sensitivity: float) -> float:
    """Keep `sensitivity` (in [0, 1]) in `bundle`'s calibration (config.json rewritten atomically); returns
    the value it replaces. BundleError when the bundle has no calibration."""
    config = read_config(bundle)
    if config.calibration is None:
        raise BundleError(f"{Path(bundle) / CONFIG_FILE}: no calibration to keep a sensitivity in")
    old = config.calibration.sensitivity
    config.calibration = dataclasses.replace(config.calibration, sensitivity=float(sensitivity))
    write_config(bundle, config)
    return old


# ---- paths and checksums ------------------------------------------------------------------------------
def inside_path(rel: str, what: str) -> PurePosixPath:
    """`rel` as a relative path that cannot leave the bundle (no absolute path, no '..', no backslash)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or ".." in pure.parts or re.match(r"^[A-Za-z]:", rel):
        raise BundleError(f"{what}: {rel!r} must be a path relative to the bundle, inside it "
                          "(no absolute path, no '..'): a bundle is self-contained")
    return pure


def artifact_path(bundle: str | Path, rel: str) -> Path:
    """The file `rel` (a recorded path) of the bundle: `bundle / rel`, the one place the two are joined.

    BundleError when `rel` leaves the bundle, lexically or through a symbolic link.
    """
    root = Path(bundle)
    path = root / inside_path(rel, f"{root / CONFIG_FILE}")
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on some Python versions
        raise BundleError(f"{path}: {_os_problem(exc) if isinstance(exc, OSError) else 'symbolic link loop'}") from exc
    if real != real_root and real_root not in real.parents:
        raise BundleError(f"{path} resolves to {real}, outside the bundle {real_root}: a bundle is "
                          "self-contained (copy the file into it instead of linking)")
    return path


def relative_path(bundle: str | Path, path: str | Path) -> str:
    """`path` (absolute, or relative to the working directory) relative to the bundle, as recorded."""
    root, path = Path(bundle).resolve(), Path(path).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError as exc:
        raise BundleError(f"{path} is outside the bundle {root}: artifacts must live inside it") from exc


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB chunks; BundleError naming the OS problem."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BundleError(f"{path}: {_os_problem(exc)}") from exc
    return h.hexdigest(), size


def make_record(bundle: str | Path, path: str | Path, **meta: Any) -> dict[str, Any]:
    """An artifact record for `path` (inside the bundle): path, sha256, bytes, then `meta`."""
    digest, size = sha256_file(path)
    return {"path": relative_path(bundle, path), "sha256": digest, "bytes": size, **meta}


def verify_record(bundle: str | Path, config: BundleConfig, record: dict[str, Any], what: str,
                  fix: str) -> Path:
    """The recorded file, after checking it is inside the bundle, readable, of its recorded size and
    sha256, and (for graphs and engines) made from the current weights. BundleError says which and `fix`."""
    path = artifact_path(bundle, record["path"])
    weights = config.artifacts.get("weights")
    if "weights_sha256" in record and (not weights or record["weights_sha256"] != weights["sha256"]):
        raise BundleError(f"{path}: this {what} was made from other weights than the bundle's "
                          f"weights (left from an earlier training?); {fix}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BundleError(f"{path}: {what} {_os_problem(exc)}; {fix}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: {what} is {'a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file'}, "
                          f"not a file; {fix}")
    size = st.st_size
    if size != record["bytes"]:
        raise BundleError(f"{path}: {what} is {size} bytes, {record['bytes']} were recorded (truncated or "
                          f"replaced); {fix}")
    digest, _ = sha256_file(path)
    if digest != record["sha256"]:
        raise BundleError(f"{path}: {what}'s sha256 differs from the one recorded in config.json (file "
                          f"changed or corrupt); {fix}")
    return path


# ---- the bundle's files -------------------------------------------------------------------------------
def _legacy_refusal(bundle: str | Path, what: str) -> BundleError:
    return BundleError(f"{bundle}: schema 1 bundle (written before aminet-edge recorded checksums): its {what} "
                       f"cannot be verified and may be stale; " + REEXPORT.format(bundle=bundle))


def weights_file(bundle: str | Path, config: BundleConfig) -> Path:
    """The bundle's weights, verified against their recorded sha256 (schema 1: unverified, with a warning)."""
    if config.legacy:
        path = Path(bundle) / WEIGHTS_FILE
        try:  # readable? (the real reason: permission, loop; safetensors would say "no such file")
            open(path, "rb").close()
        except OSError as exc:
            raise BundleError(f"{path}: {_os_problem(exc)}") from exc
        log.warning("%s: schema 1 bundle: no checksum recorded, weights loaded unverified; re-export it "
                    "(`aminet-edge export %s`) to record one", bundle, bundle)
        return path
    record = config.artifacts.get("weights")
    if record is None:
        raise BundleError(f"{Path(bundle) / CONFIG_FILE} records no weights (artifacts.weights): the bundle is "
                          "incomplete; train it again with `aminet-edge train`")
    return verify_record(bundle, config, record, "weights file", "the bundle is damaged: copy it again from "
                         "where it was trained, or retrain")


def graph_record(bundle: str | Path, config: BundleConfig, part: str, precision: str = "fp32") -> dict[str, Any]:
    """The record of graph `part` at `precision`; BundleError when it is not recorded (or a schema 1
    bundle), saying whether an unrecorded file of that name lies in the bundle."""
    if config.legacy:
        raise _legacy_refusal(bundle, "ONNX graphs")
    record = (config.artifacts.get("onnx") or {}).get(graph_key(part, precision))
    if record is None:
        name = onnx_name(part, precision)
        stray = (Path(bundle) / name).exists()
        flag = f" --precision {precision}" if precision != "fp32" else ""
        raise BundleError(
            f"{Path(bundle) / name} {'is not recorded in config.json (left from an earlier training or export?)' if stray else 'not found'}: "
            f"export it with `aminet-edge export {bundle}{flag}`")
    problem = guide_bank_problem(config, record)
    if problem is not None:
        raise BundleError(f"{artifact_path(bundle, record['path'])}: {problem}; " + REEXPORT.format(bundle=bundle))
    return record  # type: ignore[no-any-return]


def has_graph(config: BundleConfig, part: str, precision: str) -> bool:
    """Whether graph `part` at `precision` is recorded (schema 1 bundles record none usable)."""
    return not config.legacy and graph_key(part, precision) in (config.artifacts.get("onnx") or {})


def int8_accepted(config: BundleConfig, part: str, precision: str) -> bool:
    """Whether int8 graph `part` at `precision` ("int8", "int8_static") is recorded with a passed accuracy
    check: its record's "validation" object has "accepted": true (written by the export that validated it
    on held-out normal images). Only such graphs are candidates of `Detector.load(backend="auto")`."""
    if not has_graph(config, part, precision):
        return False
    validation = config.artifacts["onnx"][graph_key(part, precision)].get("validation")
    return isinstance(validation, dict) and validation.get("accepted") is True


def graph_file(bundle: str | Path, config: BundleConfig, part: str, precision: str = "fp32",
               verify: bool = True) -> Path:
    """Path of graph `part` at `precision`; verified (size, sha256, weights) unless verify=False, where
    only its record and presence are checked (cheap, for availability)."""
    record = graph_record(bundle, config, part, precision)
    fix = REEXPORT.format(bundle=bundle)
    if verify:
        return verify_record(bundle, config, record, "graph", fix)
    path = artifact_path(bundle, record["path"])
    if not path.is_file():
        raise BundleError(f"{path} {'is a directory, not a file' if path.is_dir() else 'not found'} (config.json "
                          f"records it); {fix}")
    return path


def engine_records(bundle: str | Path, config: BundleConfig) -> list[dict[str, Any]]:
    """The bundle's engine records (validated at read); BundleError for a schema 1 bundle with engines."""
    engines = config.artifacts.get("engines") or []
    if config.legacy and engines:
        raise _legacy_refusal(bundle, "engines")
    return list(engines) if not config.legacy else []


def engine_record(bundle: str | Path, config: BundleConfig, path: str | Path) -> dict[str, Any]:
    """The record of the engine file `path` (absolute, or relative to the bundle); BundleError when
    it is not recorded: an engine the bundle does not record is never run."""
    path = Path(path)
    full = (path if path.is_absolute() else artifact_path(bundle, path.as_posix())).resolve()
    for record in engine_records(bundle, config):
        if artifact_path(bundle, record["path"]).resolve() == full:
            return record
    raise BundleError(f"{full} is not recorded in {Path(bundle) / CONFIG_FILE}; build engines with "
                      f"`aminet-edge build-engine {bundle}` so that they are checksummed")


def verify_bundle(bundle: str | Path, config: BundleConfig | None = None) -> dict[str, str]:
    """{recorded path: "ok" or the problem} for every file config.json records, and every graph or
    engine file lying in the bundle unrecorded. Hashes each file once."""
    config = config or read_config(bundle)
    out: dict[str, str] = {}

    def check(name: str, fn: Any) -> None:
        try:
            fn()
            out[name] = "ok"
        except BundleError as exc:
            out[name] = str(exc)

    check(WEIGHTS_FILE if config.legacy else str((config.artifacts.get("weights") or {}).get("path", WEIGHTS_FILE)),
          lambda: weights_file(bundle, config))
    fix = REEXPORT.format(bundle=bundle)
    if config.legacy:
        if config.artifacts.get("onnx") or config.artifacts.get("engines"):
            out["graphs and engines"] = str(_legacy_refusal(bundle, "graphs and engines"))
        return out
    def graph(record: dict[str, Any]) -> None:
        problem = guide_bank_problem(config, record)
        if problem is not None:
            raise BundleError(f"{problem}; {fix}")
        verify_record(bundle, config, record, "graph", fix)

    for record in (config.artifacts.get("onnx") or {}).values():
        check(record["path"], lambda r=record: graph(r))
    for record in config.artifacts.get("engines") or []:
        check(record["path"], lambda r=record: verify_record(bundle, config, r, "engine", fix))
    for stray in stray_files(bundle, config):
        out[stray.relative_to(bundle).as_posix()] = "not recorded in config.json (left from an earlier training or " \
                                            f"export?): the runtime never uses it; delete it or {fix}"
    return out


def _layout_files(bundle: Path) -> list[Path]:
    """Weights, graph and engine files of the standard layout present in the bundle."""
    names = [bundle / onnx_name(g, p) for g in GRAPHS for p in PRECISIONS]
    weights = sorted(bundle.glob("weights*.safetensors"))
    engines = sorted((bundle / ENGINE_DIR).glob("*.engine")) if (bundle / ENGINE_DIR).is_dir() else []
    return [p for p in weights + names if p.is_file() or p.is_symlink()] + engines


def recorded_paths(config: BundleConfig) -> list[str]:
    """Every file config.json records (weights, graphs, engines), as recorded: relative to the bundle
    (schema 1: the weights' layout name)."""
    art = config.artifacts
    weights = [WEIGHTS_FILE] if config.legacy else [art["weights"]["path"]] if "weights" in art else []
    return weights + [r["path"] for r in [*(art.get("onnx") or {}).values(), *(art.get("engines") or [])]
                      if isinstance(r, dict) and isinstance(r.get("path"), str)]


def stray_files(bundle: str | Path, config: BundleConfig) -> list[Path]:
    """Weights, graph and engine files (or links) lying in the bundle that config.json does not record,
    compared by name: no link is followed."""
    bundle = Path(bundle)
    recorded = {PurePosixPath(rel) for rel in recorded_paths(config)}
    return [p for p in _layout_files(bundle) if PurePosixPath(p.relative_to(bundle).as_posix()) not in recorded]


def owned_bundle(bundle: str | Path, also: tuple[str, ...] = ()) -> BundleConfig | None:
    """The config of the bundle at `bundle` when it is one, None when there is nothing there yet (or only
    the files named in `also`, e.g. a training's checkpoint). BundleError, before anything is written,
    when `bundle` is a file, an unreadable bundle, a folder holding other files (temporary files a crashed
    write left, aminet_edge.files.TEMP_NAME, do not count), or one of `also` that is not a regular file
    (a folder, a link): aminet-edge writes into (and deletes recorded files of) a directory it owns only."""
    root = Path(bundle)
    if not os.path.lexists(root):
        return None
    if not root.is_dir():
        raise BundleError(f"{root} exists and is not a directory: choose another output folder")
    for name in also:  # the caller writes (replaces) these: each must be a regular file if present
        if os.path.lexists(root / name) and not stat.S_ISREG(os.lstat(root / name).st_mode):
            raise BundleError(f"{root / name} is not a regular file (a folder or a link) where aminet-edge writes "
                              f"its {name}: it is left alone; move it away or choose another output folder")
    if os.path.lexists(root / CONFIG_FILE):
        try:
            return read_config(root)
        except BundleError as exc:
            raise BundleError(f"{exc}; {root} is not a readable bundle, so nothing is written into it: choose "
                              "another output folder, or repair or remove this one") from exc
    others = sorted(p.name for p in root.iterdir() if p.name not in also and not TEMP_NAME.fullmatch(p.name))
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise BundleError(f"{root} is a folder that is not an aminet-edge bundle (no {CONFIG_FILE}; it holds "
                          f"{listed}): its files are left alone; choose a new or empty output folder")
    return None


def refuse_output_overlap(bundle: str | Path, out: str | Path, what: str, kind: str = "folder") -> None:
    """BundleError if the output `out` (a `kind`: "folder" or "file", named `what` in the message) is,
    contains or lies inside the bundle folder `bundle` (links resolved): a bundle's files are written by
    the verbs that record them only, never over by an output (`evaluate --json RUN/config.json`)."""
    r, o = Path(bundle).resolve(), Path(out).resolve()
    relation = "is" if r == o else "contains" if o in r.parents else "lies inside" if r in o.parents else None
    if relation:
        raise BundleError(f"{out}: {what} {relation} the bundle {bundle}; choose a {kind} outside the bundle "
                          "(outputs are never written over, around or into a bundle)")


def remove_recorded(bundle: str | Path, old: BundleConfig, reason: str) -> list[Path]:
    """Delete the files `old` (the config.json just replaced) records that the bundle's current
    config.json does not, each logged with `reason`; never a file outside the bundle or through a link."""
    keep = set(recorded_paths(read_config(bundle)))
    removed = remove_owned(bundle, [r for r in recorded_paths(old) if r not in keep], reason)
    for path in removed:
        log.warning("removed %s: %s", path, reason)
    return removed


def install_artifacts(bundle: str | Path, staged: dict[Path, Path], record: Callable[[BundleConfig], None],
                      made: BundleConfig) -> BundleConfig:
    """Put graph or engine files in place and record them, so that a crash at any instant leaves a
    loadable bundle. staged: {temporary file (aminet_edge.files.write_temp): its final path in the bundle};
    record(config): adds their records to config.artifacts (the files are in place when it runs);
    made: the config the files were made from. When the bundle's weights or what its graphs compute
    (input size, graph_computes) changed since (a training or set-mask finished meanwhile), nothing is
    installed (the temporary files are deleted) and BundleError says to export again: the files would be
    recorded as computing what they do not.

    A final path already recorded and holding the same content keeps its file (nothing renamed); one
    recorded with other content (or missing) is first un-recorded (config.json written), then replaced: a crash in between
    leaves the bundle without that file, never with a record that does not match it. config.json is
    written last."""
    bundle = Path(bundle)
    config = read_config(bundle)

    def makes(c: BundleConfig) -> tuple[Any, ...]:
        return (c.artifacts.get("weights") or {}).get("sha256"), c.model.image_size, graph_computes(c)

    if makes(config) != makes(made):
        for tmp in staged:
            Path(tmp).unlink(missing_ok=True)
        raise BundleError(f"{bundle} changed while its files were made (retrained, set-mask or config.json "
                          f"edited meanwhile): nothing was installed; " + REEXPORT.format(bundle=bundle))
    by_path = {r["path"]: r for r in [*(config.artifacts.get("onnx") or {}).values(),
                                      *(config.artifacts.get("engines") or [])]}
    moves, replaced = [], set()
    for tmp, final in staged.items():
        rel = relative_path(bundle, final)
        old = by_path.get(rel)
        digest = sha256_file(tmp)[0]
        if old is not None and old.get("sha256") == digest and final.is_file() and not final.is_symlink() \
                and sha256_file(final)[0] == digest:  # schema 1 records hold no sha256
            tmp.unlink()  # the same bytes are recorded and in place already
            continue
        if old is not None:
            replaced.add(rel)
        moves.append((tmp, final))
    if replaced:
        onnx = config.artifacts.get("onnx") or {}
        config.artifacts["onnx"] = {k: r for k, r in onnx.items() if r["path"] not in replaced}
        if "engines" in config.artifacts:
            config.artifacts["engines"] = [r for r in config.artifacts["engines"] if r["path"] not in replaced]
        write_config(bundle, config)
    for tmp, final in moves:
        install(tmp, final)
    config = read_config(bundle)
    record(config)
    write_config(bundle, config)
    return config
