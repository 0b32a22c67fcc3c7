"""`Detector`: load a bundle once, then `predict` images with any available backend. Torch-free.

    from aminet_edge import Detector
    det = Detector.load("runs/bottle")                 # backend="auto": fastest measured here, logged
    r = det.predict("part_0001.png")                   # -> Result
    r.score, r.normalized_score, r.is_anomaly, r.anomaly_map, r.mask
    results = det.predict([frame_bgr, "b.png"], bgr=True)  # -> list[Result]; a bad item gets .error

Decision rule (all in raw score units, thresholds from the bundle's calibration):
    image_threshold = base_image_threshold * sensitivity_factor(sensitivity)
    pixel_threshold = base_pixel_threshold * sensitivity_factor(sensitivity)
    sensitivity_factor(s) = 4 ** (0.5 - s),   s in [0, 1]:
        s = 0.0 -> 2x the calibrated thresholds (flags least)
        s = 0.5 -> the calibrated thresholds (default)
        s = 1.0 -> half the calibrated thresholds (flags most)
    is_anomaly       = score > image_threshold
    normalized_score = score / image_threshold   (1.0 = on the threshold; > 1.0 = anomalous)
    mask             = anomaly_map > pixel_threshold
base thresholds: threshold="normal" (default) uses the thresholds calibrated on held-out normal images;
"f1" the F1-optimal ones `aminet-edge evaluate` records from labelled data; a float is a raw image
threshold (the pixel threshold then stays the calibrated normal one unless `pixel_threshold` is given).

Errors: a single image that cannot be used raises `InputError` (a ValueError) naming it and the
problem. In a list, each unusable image gets a Result with `.error` set (`.ok` False, score NaN, no
arrays) and the others are predicted as usual; an empty list raises InputError. Bundle problems raise
BundleError / EngineError at load, never later: every config field is validated, and each file the
backend opens is checked against its recorded size and sha256 (aminet_edge.bundle; docs/deployment.md,
"Reliability"). A missing package raises BackendUnavailableError naming the extra.

Tiling (config.json "tile", `Detector.load(tile=...)`; aminet_edge.tiling): each image is cut into
overlapping tiles of its own pixels, every tile of every image of a call goes through the backend in
one batch (split at the backend's max batch), the tiles' maps are blended into one map at the input's
resolution and the image score is the bundle's rule (std or max) over that whole map. Result.token_mask
is then (T, g, g), one token grid per tile in Result.tiles order (row-major tiles).

Thread safety: one Detector may be shared by threads. Decoding, preprocessing and post-processing run
in the calling thread; the backend call is serialised by a lock, so results equal serial use exactly.
Determinism: the same input through the same Detector and batch size gives bit-identical results.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError, Calibration, read_config
from aminet_edge.config import TileConfig
from aminet_edge.data.images import resize_map
from aminet_edge.runtime import host_kernels
from aminet_edge.runtime.backends import Backend, create_backend
from aminet_edge.runtime.inputs import InputError, Limits, batch_items, describe, split_batch, to_frame, to_rgb
from aminet_edge.runtime.result import Result, Thresholds, Timing
from aminet_edge.tiling import Box, crop, grid, stitch_and_score

log = logging.getLogger("aminet_edge.runtime")

ThresholdSpec = str | float
TileSpec = str | TileConfig | tuple[int, int] | None  # Detector.load's tile: "bundle", TileConfig, (size, overlap), None


def resolve_tile(config: BundleConfig, tile: TileSpec = "bundle", warn: bool = True) -> TileConfig | None:
    """The tiling in force: the bundle's ("bundle"), none (None) or the one given (TileConfig or (size,
    overlap) px); ValueError for a bad one. Tiling other than the bundle's is logged: the calibrated
    thresholds were measured on maps made the bundle's way and do not transfer."""
    if isinstance(tile, str):
        if tile != "bundle":
            raise ValueError(f"tile must be 'bundle', None, a TileConfig or (size, overlap), got {tile!r}")
        return config.tile
    if tile is not None and not isinstance(tile, TileConfig):
        try:
            size, overlap = tile
        except (TypeError, ValueError):
            raise ValueError(f"tile must be 'bundle', None, a TileConfig or (size, overlap), got {tile!r}") from None
        tile = TileConfig(size, overlap)
    if tile is not None:
        tile.validate()
    if warn and tile != config.tile:
        log.warning("tiling %s differs from the bundle's (%s): its calibrated thresholds do not apply to these "
                    "maps and scores; pass threshold= / pixel_threshold= or retrain with this tiling",
                    tile or "off", config.tile or "off")
    return tile


def sensitivity_factor(sensitivity: float) -> float:
    """The threshold multiplier 4 ** (0.5 - sensitivity); sensitivity must be in [0, 1].

    0 -> 2.0, 0.25 -> 1.414, 0.5 -> 1.0, 0.75 -> 0.707, 1 -> 0.5: each 0.25 step up divides both
    thresholds by sqrt(2), so higher sensitivity flags more images and more pixels.
    """
    s = float(sensitivity)
    if not 0.0 <= s <= 1.0 or math.isnan(s):
        raise ValueError(f"sensitivity must be in [0, 1] (0.5 = calibrated threshold), got {sensitivity!r}")
    return float(4.0 ** (0.5 - s))


def resolve_thresholds(calibration: Calibration | None, threshold: ThresholdSpec = "normal",
                       pixel_threshold: float | None = None, sensitivity: float = 0.5) -> Thresholds:
    """Thresholds in force for `threshold` ("normal", "f1" or a raw float), `pixel_threshold` and sensitivity."""
    factor = sensitivity_factor(sensitivity)

    def need_calibration(what: str) -> Calibration:
        if calibration is None:
            raise BundleError(f"the bundle has no calibration, so {what} is unknown: pass threshold=<float> "
                              f"and pixel_threshold=<float> (raw score units)")
        return calibration

    if isinstance(threshold, str):
        cal = need_calibration(f"threshold={threshold!r}")
        if threshold == "normal":
            image, pixel, source = cal.image_threshold, cal.pixel_threshold, cal.image_source
        elif threshold == "f1":
            if cal.f1_image_threshold is None or cal.f1_pixel_threshold is None:
                raise BundleError("the bundle records no F1-optimal thresholds: run `aminet-edge evaluate RUN DATA` "
                                  "on labelled images first, or use threshold='normal'")
            image, pixel, source = cal.f1_image_threshold, cal.f1_pixel_threshold, "f1"
        else:
            raise ValueError(f"threshold must be 'normal', 'f1' or a float, got {threshold!r}")
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        image, source = float(threshold), "user"
        pixel = (need_calibration("the pixel threshold").pixel_threshold if pixel_threshold is None
                 else float(pixel_threshold))
    else:
        raise ValueError(f"threshold must be 'normal', 'f1' or a float, got {threshold!r}")
    if pixel_threshold is not None:
        pixel = float(pixel_threshold)
    for name, value in (("image threshold", image), ("pixel threshold", pixel)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return Thresholds(image=image * factor, pixel=pixel * factor, base_image=float(image), base_pixel=float(pixel),
                      sensitivity=float(sensitivity), source=source)


def override_thresholds(default: Thresholds, calibration: Calibration | None,
                        base: tuple[ThresholdSpec, float | None, float], threshold: ThresholdSpec | None,
                        sensitivity: float | None, pixel_threshold: float | None) -> Thresholds:
    """Thresholds of one predict call: `default` when it overrides nothing, else `base` (the loaded
    threshold, pixel_threshold, sensitivity) with the call's overrides. A new `threshold` drops the loaded
    pixel_threshold (the pixel threshold then follows the new rule)."""
    if threshold is None and sensitivity is None and pixel_threshold is None:
        return default
    base_threshold, base_pixel, base_sensitivity = base
    return resolve_thresholds(
        calibration, base_threshold if threshold is None else threshold,
        base_pixel if pixel_threshold is None and threshold is None else pixel_threshold,
        base_sensitivity if sensitivity is None else sensitivity)


@dataclass(frozen=True)
class RawOutput:
    """One image's model outputs before the decision rule: amap (S, S) float32 raw map units, the raw
    score, token_mask (L,) bool, the input's height / width (px), and timing (ms; backend_ms is the
    whole backend call of batch_size images). Tiled: amap is the stitched (height, width) map, score its
    image score, token_mask (T, g, g), tiles the T boxes, backend_ms this image's tiles' share of the
    backend calls that ran them (batch_size 1)."""

    amap: np.ndarray
    score: float
    token_mask: np.ndarray
    height: int
    width: int
    preprocess_ms: float
    backend_ms: float
    batch_size: int
    tiles: tuple[Box, ...] | None = None


def decide(source: str, index: int, amap: np.ndarray, score: Any, token_mask: np.ndarray,
           map_hw: tuple[int, int], thresholds: Thresholds, backend: str, preprocess_ms: float = 0.0,
           backend_ms: float = 0.0, batch: int = 1, tiles: tuple[Box, ...] | None = None) -> Result:
    """One image's Result from the model's raw outputs: the decision rule of the module docstring.

    amap: (h, w) float32 raw map (the model's S x S, or a map already resized by a server); score: the raw
    image score; token_mask: (L,) or (g, g) bool, or (T, g, g) of a tiled image (kept as is); map_hw: (H, W)
    of the Result's anomaly_map and mask
    (the input's resolution, bilinear resize_map). A non-finite score or map gives an error Result.
    Shared by `Detector` and `aminet_edge.serving.RemoteDetector`, so both decide identically.
    """
    t0 = time.perf_counter()
    score = float(score)
    if not (math.isfinite(score) and np.isfinite(amap).all()):
        error = InputError(source, "the model produced a non-finite score or map for this image",
                           None if source == "input" else index)
        return Result(source=source, index=index, error=error, backend=backend)
    full = resize_map(np.asarray(amap, np.float32), int(map_hw[0]), int(map_hw[1]))
    mask = full > np.float32(thresholds.pixel)
    tokens = np.array(token_mask, dtype=bool)
    if tokens.ndim != 3:
        side = math.isqrt(int(tokens.size))
        tokens = tokens.reshape(side, side)
    timing = Timing(preprocess_ms, backend_ms, (time.perf_counter() - t0) * 1e3, batch)
    return Result(source=source, index=index, score=score, normalized_score=score / thresholds.image,
                  is_anomaly=bool(score > thresholds.image), anomaly_map=full, mask=mask,
                  token_mask=tokens, thresholds=thresholds, timing=timing, backend=backend, tiles=tiles)


@dataclass
class _Prepared:
    index: int
    source: str
    # (3, S, S) float32, or for a frame-taking backend the (H, W, 3) frame (inputs.to_frame): the whole
    # image, or one per tile of `tiles`
    tensors: list[np.ndarray]
    height: int
    width: int
    preprocess_ms: float
    tiles: tuple[Box, ...] | None = None


class Detector:
    """A loaded bundle plus one inference backend. Create with `Detector.load`.

    Attributes: backend (name of the backend in use, e.g. "onnxruntime-split"), device, backend_reason
    (why `auto` chose it), bundle, config (BundleConfig), image_size, thresholds (defaults in force),
    batch_size, limits, tile (TileConfig in force or None).
    """

    def __init__(self, backend: Backend, config: BundleConfig, bundle: Path, threshold: ThresholdSpec = "normal",
                 sensitivity: float = 0.5, pixel_threshold: float | None = None, batch_size: int = 8,
                 limits: Limits | None = None, backend_reason: str = "", tile: TileSpec = "bundle") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._backend = backend
        self._frames = bool(getattr(backend, "takes_frames", False))
        self._lock = threading.Lock()
        self._closed = False
        self.config = config
        self.bundle = bundle
        self.backend = backend.name
        self.device = backend.device
        self.precision = backend.precision  # of what runs: "fp32", "fp16", "int8" or "bf16" (mixed)
        self.backend_reason = backend_reason
        self.image_size = config.model.image_size
        self.grid_size = config.model.grid_size
        self.batch_size = int(batch_size)
        self.limits = limits or Limits()
        self.tile = resolve_tile(config, tile)
        self._threshold = threshold
        self._pixel_threshold = pixel_threshold
        self._sensitivity = sensitivity
        self.thresholds = resolve_thresholds(config.calibration, threshold, pixel_threshold, sensitivity)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle: str | Path, backend: str = "auto", device: str = "cpu", threshold: ThresholdSpec = "normal",
             sensitivity: float = 0.5, *, pixel_threshold: float | None = None, batch_size: int = 8,
             limits: Limits | None = None, tile: TileSpec = "bundle", **backend_options: Any) -> "Detector":
        """Load `bundle` (a directory written by `aminet-edge train` / `export`) for inference.

        backend: "auto" or "openvino", "openvino-split", "torch", "onnxruntime", "onnxruntime-split",
            "tensorrt" (forces that one). "auto" on cpu times the accurate candidates (fp32 graphs and
            validated int8 ones) once per bundle, machine and library versions, ~2 s, and keeps the fastest
            in bundle/cache/auto_backend.json (backends.auto; AMINET_AUTO=table skips the timing and takes
            the CPU-flag table's order, backends.auto_order); on cuda: tensorrt, torch, onnxruntime. The
            choice and why is in `.backend` / `.precision` / `.backend_reason` and logged on logger
            "aminet_edge.runtime".
        device: "cpu" or "cuda".
        threshold / sensitivity / pixel_threshold: the default decision rule (module docstring); each
            `predict` call may override them.
        batch_size: images per backend call in `predict` / `predict_batch` (capped by the backend's max).
        limits: image size limits (inputs.Limits).
        tile: "bundle" (config.json's tiling, the default), None (whole image resized), a TileConfig or
            (size, overlap) px: native-resolution tiling (module docstring). Other than the bundle's, the
            calibrated thresholds do not apply (logged).
        backend_options: passed to the backend, e.g. threads=4 (openvino, onnxruntime, torch),
            ops_backend="reference" (torch), precision="fp32" / "int8" (onnxruntime; default int8 when the
            bundle was exported with `--precision int8`) or "fp32" / "bf16" / "int8" (openvino; default bf16 mixed
            where the CPU has native bf16, else fp32; int8 needs `export --precision int8
            --calibration-data`), cache=False / "dir" (openvino's compiled-model cache, default
            bundle/cache/openvino), cuda_graph=True / engine="path" (tensorrt); torch: precision="fp16" /
            "bf16" (autocast), cuda_graph=True (one graph per batch size, cuda), device_preprocess (frames
            resized and normalised on the device; default on for cuda).
        """
        bundle = Path(bundle)
        config = read_config(bundle)
        # thresholds first: a bad threshold argument should not cost a model load
        resolve_thresholds(config.calibration, threshold, pixel_threshold, sensitivity)
        if tile != "bundle":
            resolve_tile(config, tile, warn=False)  # a bad tile argument should not cost a model load either
        if backend == "auto":
            from aminet_edge.runtime.backends.auto import choose_backend

            instance, reason = choose_backend(bundle, config, device, backend_options)
        else:
            instance = create_backend(backend, bundle, config, device, **backend_options)
            reason = f"requested backend={backend!r}"
        detector = cls(instance, config, bundle, threshold, sensitivity, pixel_threshold, batch_size, limits, reason,
                       tile)
        log.info("aminet-edge Detector: %s [%s] for %s", instance.describe(), reason, bundle)
        return detector

    def close(self) -> None:
        """Release the backend's sessions and device memory."""
        with self._lock:
            self._backend.close()
            self._closed = True

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({str(self.bundle)!r}, backend={self.backend!r}, device={self.device!r}, "
                f"image_threshold={self.thresholds.image:.6g}, pixel_threshold={self.thresholds.pixel:.6g})")

    @property
    def backend_description(self) -> str:
        """One line: the backend and what runs underneath."""
        return self._backend.describe()

    @property
    def sensitivity(self) -> float:
        """The default sensitivity in force (module docstring)."""
        return float(self._sensitivity)

    def set_sensitivity(self, sensitivity: float) -> Thresholds:
        """Change the default sensitivity for the calls that follow (in-flight calls keep theirs); returns
        the new thresholds. ValueError outside [0, 1]. Persist it with `bundle.write_sensitivity`."""
        thresholds = resolve_thresholds(self.config.calibration, self._threshold, self._pixel_threshold, sensitivity)
        self._sensitivity, self.thresholds = float(sensitivity), thresholds
        return thresholds

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, x: Any, *, bgr: bool = False, threshold: ThresholdSpec | None = None,
                sensitivity: float | None = None, pixel_threshold: float | None = None) -> Result | list[Result]:
        """Predict one image (-> Result) or a batch (list/tuple, (N,H,W,C) array, (N,C,H,W) tensor -> list).

        x: path, PIL image, numpy (H, W) / (H, W, C) uint8, uint16 or float in [0, 1], or a torch tensor
            (C, H, W); see aminet_edge.runtime.inputs. bgr: colour arrays are BGR(A) (OpenCV).
        threshold / sensitivity / pixel_threshold: override the Detector's defaults for this call.
        A single bad image raises InputError; in a batch it becomes that item's Result.error.
        """
        items, is_batch = split_batch(x)
        thresholds = self._thresholds_for(threshold, sensitivity, pixel_threshold)
        if not is_batch:
            prepared = self._prepare_one(items[0], 0, None, bgr)
            if isinstance(prepared, Result):
                prepared.raise_for_error()
            result = self._run([prepared], thresholds)[0]  # type: ignore[list-item]
            return result.raise_for_error()
        return self._predict_list(items, bgr, thresholds, self.batch_size, prefetch=False)

    def predict_batch(self, images: Iterable[Any] | np.ndarray, *, batch_size: int | None = None,
                      bgr: bool = False, threshold: ThresholdSpec | None = None, sensitivity: float | None = None,
                      pixel_threshold: float | None = None, prefetch: bool = True) -> list[Result]:
        """Predict many images for throughput: batches of `batch_size`, always a list of Results in order.

        With prefetch, the next batch is decoded and preprocessed in a helper thread while the backend
        runs the current one. Results equal `predict(list)` with the same batch size.
        """
        items = batch_items(images)
        thresholds = self._thresholds_for(threshold, sensitivity, pixel_threshold)
        size = self.batch_size if batch_size is None else int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self._predict_list(items, bgr, thresholds, size, prefetch)

    def infer(self, images: Sequence[Any], *, bgr: bool = False) -> list[RawOutput | InputError]:
        """The model's raw outputs for a list of images, before any threshold: one backend call per
        max-batch chunk, items in order, an unusable image as its InputError. For servers that leave the
        decision to their clients (aminet_edge.serving); `decide` turns a RawOutput into a Result."""
        prepared = self._prepare(list(images), 0, bgr)
        good = [p for p in prepared if isinstance(p, _Prepared)]
        raws = dict(zip((p.index for p in good), self._raw(good))) if good else {}
        return [raws[p.index] if isinstance(p, _Prepared) else p.error for p in prepared]  # type: ignore[misc]

    def thresholds_for(self, threshold: ThresholdSpec | None = None, sensitivity: float | None = None,
                       pixel_threshold: float | None = None) -> Thresholds:
        """The thresholds a predict call with these overrides would use (None = the Detector's default)."""
        return self._thresholds_for(threshold, sensitivity, pixel_threshold)

    # -- internals ------------------------------------------------------------------------------
    def _thresholds_for(self, threshold: ThresholdSpec | None, sensitivity: float | None,
                        pixel_threshold: float | None) -> Thresholds:
        return override_thresholds(self.thresholds, self.config.calibration,
                                   (self._threshold, self._pixel_threshold, self._sensitivity),
                                   threshold, sensitivity, pixel_threshold)

    def _prepare_one(self, x: Any, position: int, index: int | None, bgr: bool) -> _Prepared | Result:
        """Decode, validate and preprocess one input; an unusable input becomes an error Result."""
        t0 = time.perf_counter()
        source = describe(x, index)
        try:
            rgb = (to_frame if self._frames else to_rgb)(x, index, bgr, self.limits)
        except InputError as exc:
            return Result(source=source, index=position, error=exc, backend=self.backend)
        tiles = None if self.tile is None else tuple(grid(rgb.shape[0], rgb.shape[1], self.tile))
        parts = [rgb] if tiles is None else [crop(rgb, box) for box in tiles]
        if self._frames:  # the backend resizes and normalises on its device
            tensors = [np.ascontiguousarray(part) for part in parts]
        else:
            tensors = [host_kernels.preprocess(part, self.image_size, self.config.mean, self.config.std)
                       for part in parts]
        return _Prepared(position, source, tensors, int(rgb.shape[0]), int(rgb.shape[1]),
                         (time.perf_counter() - t0) * 1e3, tiles)

    def _prepare(self, items: Sequence[Any], offset: int, bgr: bool) -> list[_Prepared | Result]:
        return [self._prepare_one(x, offset + i, offset + i, bgr) for i, x in enumerate(items)]

    def _predict_list(self, items: Sequence[Any], bgr: bool, thresholds: Thresholds, batch_size: int,
                      prefetch: bool) -> list[Result]:
        starts = range(0, len(items), batch_size)
        results: list[Result] = []
        if not prefetch or len(starts) == 1:
            for s in starts:
                results += self._finish(self._prepare(items[s:s + batch_size], s, bgr), thresholds)
            return results
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="aminet-prefetch") as pool:
            future = pool.submit(self._prepare, items[0:batch_size], 0, bgr)
            for k, s in enumerate(starts):
                prepared = future.result()
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    future = pool.submit(self._prepare, items[nxt:nxt + batch_size], nxt, bgr)
                results += self._finish(prepared, thresholds)
        return results

    def _finish(self, prepared: list[_Prepared | Result], thresholds: Thresholds) -> list[Result]:
        """Run the good items through the backend and merge the error Results back in input order."""
        good = [p for p in prepared if isinstance(p, _Prepared)]
        done = {r.index: r for r in self._run(good, thresholds)} if good else {}
        return [p if isinstance(p, Result) else done[p.index] for p in prepared]

    def _infer(self, tensors: list[np.ndarray]) -> tuple[Any, float]:
        """One backend call (serialised by the lock), padding to the backend's fixed batch if it has one.

        tensors: preprocessed (3, S, S) float32 images, stacked for `run`; or, for a frame-taking backend,
        (H, W, 3) frames passed as a list to `run_frames`.
        """
        n = len(tensors)
        fixed = getattr(self._backend, "exact_batch", False) and self._backend.max_batch
        if fixed and n < self._backend.max_batch:  # type: ignore[operator]
            tensors = tensors + [tensors[-1]] * (self._backend.max_batch - n)  # type: ignore[operator]
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            t0 = time.perf_counter()
            out = self._backend.run_frames(tensors) if self._frames else self._backend.run(np.stack(tensors))
            ms = (time.perf_counter() - t0) * 1e3
        return out, ms

    def _raw(self, prepared: list[_Prepared]) -> list[RawOutput]:
        if self.tile is not None:
            return self._raw_tiled(prepared, self.tile)
        step = min(len(prepared), self._backend.max_batch or len(prepared))
        raws: list[RawOutput] = []
        for s in range(0, len(prepared), step):
            chunk = prepared[s:s + step]
            out, backend_ms = self._infer([p.tensors[0] for p in chunk])
            raws += [RawOutput(out.amap[j], float(out.score[j]), out.mask[j], p.height, p.width, p.preprocess_ms,
                               backend_ms, len(chunk)) for j, p in enumerate(chunk)]
        return raws

    def _raw_tiled(self, prepared: list[_Prepared], tile: TileConfig) -> list[RawOutput]:
        """All tiles of all `prepared` images through the backend as one batch (max-batch chunks), then
        each image's tile maps stitched and scored (aminet_edge.tiling)."""
        tensors = [t for p in prepared for t in p.tensors]
        owner = [k for k, p in enumerate(prepared) for _ in p.tensors]
        step = min(len(tensors), self._backend.max_batch or len(tensors))
        amaps: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        share = [0.0] * len(prepared)
        for s in range(0, len(tensors), step):
            n = len(tensors[s:s + step])
            out, backend_ms = self._infer(tensors[s:s + step])
            amaps += [np.asarray(out.amap[j], np.float32) for j in range(n)]
            masks += [np.asarray(out.mask[j], bool) for j in range(n)]
            for k in owner[s:s + n]:
                share[k] += backend_ms / n
        raws, start, g = [], 0, self.grid_size
        for k, p in enumerate(prepared):
            tiles = p.tiles or ()
            end = start + len(tiles)
            amap, score = stitch_and_score(amaps[start:end], tiles, p.height, p.width, tile,
                                           self.config.score.image_score)
            tokens = np.stack(masks[start:end]).reshape(len(tiles), g, g)
            raws.append(RawOutput(amap, score, tokens, p.height, p.width, p.preprocess_ms, share[k], 1, p.tiles))
            start = end
        return raws

    def _run(self, prepared: list[_Prepared], thresholds: Thresholds) -> list[Result]:
        return [decide(p.source, p.index, r.amap, r.score, r.token_mask, (r.height, r.width), thresholds,
                       self.backend, r.preprocess_ms, r.backend_ms, r.batch_size, r.tiles)
                for p, r in zip(prepared, self._raw(prepared))]
