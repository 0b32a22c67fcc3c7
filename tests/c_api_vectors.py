"""Test vectors of the C runtime, written by the Python Detector (docs/c-api.md, "Test vectors").

`write_vectors(bundle, out)` writes frames as raw bytes, the Python Detector's results for calls over
them (scores, decisions, maps, token masks, per-frame errors), and bundles broken in the ways the C
library must refuse, each checked here to be refused by the Python Detector with the same message
fragment. tests/c/test_aminet.c reads them (`vectors.txt`, one record per line).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aminet_edge.runtime import Detector, InputError, Result
from aminet_edge.runtime.backends import BackendUnavailableError

MAPS = {"input": 0, "model": 1, "none": 2}


@dataclass
class Frame:
    """One frame as the C API sees it: `buffer` rows of `stride` bytes; `array` what Python is given."""

    name: str
    buffer: np.ndarray  # (H, stride) uint8
    width: int
    height: int
    channels: int
    order: str  # "rgb" or "bgr"

    @property
    def array(self) -> np.ndarray:
        """The (H, W[, C]) view of the buffer the Python Detector predicts (padding cut off)."""
        view = self.buffer[:, :self.width * self.channels].reshape(self.height, self.width, self.channels)
        return view[:, :, 0] if self.channels == 1 else view


def frame(name: str, pixels: np.ndarray, order: str = "rgb", pad: int = 0) -> Frame:
    """A Frame of `pixels` (H, W) or (H, W, C) uint8, rows padded by `pad` bytes."""
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    buffer = np.full((h, w * c + pad), 77, np.uint8)
    buffer[:, :w * c] = pixels.reshape(h, w * c)
    return Frame(name, buffer, w, h, c, order)


def frames(images: list[np.ndarray]) -> dict[str, Frame]:
    """The vector frames: six RGB surfaces of assorted sizes, BGR, grey, RGBA and padded variants, a
    frame below the minimum side, and extra frames for a call longer than one batch."""
    out = {f"rgb{i}": frame(f"rgb{i}", img) for i, img in enumerate(images)}
    out["bgr1"] = frame("bgr1", images[1][:, :, ::-1].copy(), "bgr")
    out["bgr2"] = frame("bgr2", images[2][:, :, ::-1].copy(), "bgr")
    out["grey1"] = frame("grey1", images[1].mean(axis=2).astype(np.uint8))
    alpha = np.random.default_rng(3).integers(0, 256, images[3].shape[:2] + (1,), dtype=np.uint8)
    out["rgba3"] = frame("rgba3", np.concatenate([images[3], alpha], axis=2))
    out["padded5"] = frame("padded5", images[5], pad=13)
    out["tiny"] = frame("tiny", np.full((4, 4, 3), 128, np.uint8))
    for i, img in enumerate(images[:4]):
        out[f"flip{i}"] = frame(f"flip{i}", img[::-1].copy())
    return out


@dataclass
class Call:
    """One aminet_predict call: frame names, map size and the decision overrides."""

    name: str
    frames: list[str]
    map: str = "input"
    threshold: str = "default"  # default, normal, f1 or value:<float>
    sensitivity: float = math.nan
    pixel_threshold: float = math.nan


def calls(det: Detector) -> list[Call]:
    """The vector calls: plain RGB, BGR, other layouts with a bad frame, the model-size map, each decision
    override, a single bad frame, and more frames than one batch."""
    rgb = [f"rgb{i}" for i in range(6)]
    value = float(det.thresholds.image) * 1.001
    return [
        Call("plain", rgb),
        Call("bgr", ["bgr1", "bgr2"]),
        Call("layouts", ["grey1", "rgba3", "padded5", "tiny"]),
        Call("model_map", ["rgb1", "rgb2"], map="model"),
        Call("sensitive", rgb[:3], sensitivity=0.8),
        Call("f1", rgb[:3], threshold="f1"),
        Call("value", rgb[:3], threshold=f"value:{value!r}", pixel_threshold=0.02),
        Call("single_bad", ["tiny"]),
        Call("two_batches", rgb + [f"flip{i}" for i in range(4)], map="none"),
    ]


def fragment(message: str) -> str:
    """`message` without a trailing parenthesised hint (Python adds hints about numpy layouts that a C
    caller has no use for); the part both implementations must say."""
    if not message.endswith(")"):
        return message
    depth = 0
    for i in range(len(message) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(message[i], 0)
        if depth == 0:
            return message[:i].rstrip()
    return message


def python_results(det: Detector, call: Call, images: dict[str, Frame]) -> list[Result] | InputError:
    """What the Python Detector returns for `call` (a single bad frame: the InputError it raises)."""
    arrays = [images[n].array for n in call.frames]
    bgr = {images[n].order for n in call.frames} == {"bgr"}
    kwargs: dict = {"bgr": bgr}
    if call.threshold == "f1":
        kwargs["threshold"] = "f1"
    elif call.threshold.startswith("value:"):
        kwargs["threshold"] = float(call.threshold.split(":", 1)[1])
    if not math.isnan(call.sensitivity):
        kwargs["sensitivity"] = call.sensitivity
    if not math.isnan(call.pixel_threshold):
        kwargs["pixel_threshold"] = call.pixel_threshold
    try:
        results = det.predict(arrays if len(arrays) > 1 else arrays[0], **kwargs)
    except InputError as exc:
        return exc
    return results if isinstance(results, list) else [results]


# ---- bundles the C library must refuse ------------------------------------------------------------
def _copy(bundle: Path, dst: Path) -> dict:
    dst.mkdir(parents=True)
    for name in ("config.json", "model.onnx"):
        shutil.copy(bundle / name, dst / name)
    weights = json.loads((bundle / "config.json").read_text())["artifacts"]["weights"]["path"]
    os.link(bundle / weights, dst / weights)
    return json.loads((dst / "config.json").read_text())


def _write(dst: Path, config: dict) -> None:
    (dst / "config.json").write_text(json.dumps(config, indent=1))


def broken_bundles(bundle: Path, root: Path) -> list[tuple[str, str, str, str]]:
    """(bundle dir, backend, expected status name, message fragment) for each refusal case."""
    out = [(str(root / "missing"), "openvino", "AMINET_ERR_BUNDLE", "not found")]
    (root / "empty").mkdir()
    out.append((str(root / "empty"), "openvino", "AMINET_ERR_BUNDLE", "config.json not found: not an aminet-edge bundle"))

    config = _copy(bundle, root / "tampered")
    data = bytearray((root / "tampered" / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "tampered" / "model.onnx").write_bytes(bytes(data))
    out.append((str(root / "tampered"), "openvino", "AMINET_ERR_BUNDLE", "sha256 differs from the one recorded"))

    config = _copy(bundle, root / "truncated")
    with open(root / "truncated" / "model.onnx", "r+b") as f:
        f.truncate(1000)
    out.append((str(root / "truncated"), "openvino", "AMINET_ERR_BUNDLE", "were recorded (truncated or replaced)"))

    config = _copy(bundle, root / "stale")
    config["artifacts"]["weights"]["sha256"] = "0" * 64  # weights retrained after the export
    _write(root / "stale", config)
    out.append((str(root / "stale"), "openvino", "AMINET_ERR_BUNDLE", "was made from other weights"))

    config = _copy(bundle, root / "unexported")
    config["artifacts"]["onnx"] = {}
    (root / "unexported" / "model.onnx").unlink()
    _write(root / "unexported", config)
    out.append((str(root / "unexported"), "openvino", "AMINET_ERR_BUNDLE", "model.onnx not found: export it with"))

    config = _copy(bundle, root / "outside")
    config["artifacts"]["onnx"]["model"]["path"] = "../model.onnx"
    _write(root / "outside", config)
    out.append((str(root / "outside"), "openvino", "AMINET_ERR_BUNDLE", "must be a path relative to the bundle"))

    config = _copy(bundle, root / "newer")
    config["schema_version"] = 3
    _write(root / "newer", config)
    out.append((str(root / "newer"), "openvino", "AMINET_ERR_BUNDLE", "is newer than this aminet-edge understands"))

    config = _copy(bundle, root / "badfield")
    config["preprocess"]["image_size"] = 32
    _write(root / "badfield", config)
    out.append((str(root / "badfield"), "openvino", "AMINET_ERR_BUNDLE",
                "field 'preprocess.image_size' 32 differs from model.image_size"))

    for case, part, key, value, fragment in [
            ("sigma", "score", "sigma", 2.0, "the file computes score.sigma = 4.0 but config.json says 2.0"),
            ("lambda", "model", "mask_lambda", 1.5, "the file computes model.mask_lambda = 0.5 but config.json says 1.5"),
            ("maxscore", "score", "image_score", "max", "the file computes score.image_score = "),
            ("mean", "preprocess", "mean", [10.0, 0.5, 0.5], "field 'preprocess.mean[0]' must be"),
            ("huge", "model", "image_size", 100000, "100000 is above the maximum 1024 px")]:
        config = _copy(bundle, root / case)  # config.json edited after the export, or out of range
        config[part][key] = value
        _write(root / case, config)
        out.append((str(root / case), "openvino", "AMINET_ERR_BUNDLE", fragment))

    out.append((str(bundle), "no-such-backend", "AMINET_ERR_BACKEND_UNAVAILABLE", "unknown backend 'no-such-backend'"))
    return out


def python_refuses(path: str, backend: str, fragment: str) -> None:
    """Assert the Python Detector refuses the bundle with `fragment` in its message."""
    options = {"cache": False} if backend == "openvino" else {}
    try:
        Detector.load(path, backend=backend, **options)
    except (ValueError, BackendUnavailableError) as exc:
        assert fragment in str(exc), f"Python's message {str(exc)!r} lacks {fragment!r}"
        return
    raise AssertionError(f"the Python Detector loaded {path} on {backend}")


# ---- writing ----------------------------------------------------------------------------------------
def write_vectors(bundle: Path, out: Path, det: Detector) -> Path:
    """Write frames, expected results and broken bundles under `out`; returns out / "vectors.txt".

    `det`: the Python Detector on `bundle` whose results are the expectation (backend openvino, fp32,
    batch_size 8, as the C library's defaults).
    """
    from test_detector import generated_images

    out.mkdir(parents=True, exist_ok=True)
    images = frames(generated_images())
    lines = [f"bundle {bundle}"]
    for f in images.values():
        f.buffer.tofile(out / f"{f.name}.u8")
        lines.append(f"frame {f.name} {out / f.name}.u8 {f.width} {f.height} {f.buffer.shape[1]} {f.channels} {f.order}")
    for call in calls(det):
        got = python_results(det, call, images)
        lines.append(f"call {call.name} {call.map} {call.threshold} {call.sensitivity!r} {call.pixel_threshold!r} "
                     f"{len(call.frames)} {' '.join(call.frames)}")
        if isinstance(got, InputError):
            lines.append(f"call_error AMINET_ERR_INVALID_ARGUMENT {fragment(str(got))}")
            continue
        raws = det.infer([images[n].array for n in call.frames]) if call.map == "model" else None
        for i, r in enumerate(got):
            if not r.ok:
                lines.append(f"error {i} AMINET_ERR_INVALID_ARGUMENT {fragment(str(r.error))}")
                continue
            amap = raws[i].amap if raws is not None else r.anomaly_map  # type: ignore[union-attr]
            stem = out / f"{call.name}_{i}"
            if call.map != "none":
                np.ascontiguousarray(amap, np.float32).tofile(f"{stem}.map")
            r.token_mask.astype(np.uint8).tofile(f"{stem}.tokens")
            h, w = (0, 0) if call.map == "none" else amap.shape
            lines.append(f"ok {i} {r.score!r} {r.normalized_score!r} {int(r.is_anomaly)} {r.thresholds.image!r} "
                         f"{r.thresholds.pixel!r} {w} {h} {stem}.map {stem}.tokens")
    broken = out / "broken"
    broken.mkdir(exist_ok=True)
    for path, backend, status, words in broken_bundles(bundle, broken):
        python_refuses(path, backend, words)
        lines.append(f"create {path} {backend} {status} {words}")
    (out / "vectors.txt").write_text("\n".join(lines) + "\n")
    return out / "vectors.txt"
