"""What `Detector.predict` returns per image: score, decision, anomaly map and mask together."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds in force for one prediction, in raw score units.

    base_image / base_pixel: from the bundle's calibration (`source`: "normal", "f1" or "user");
    image / pixel: after `sensitivity`, i.e. base * 4 ** (0.5 - sensitivity) (see `sensitivity_factor`).
    """

    image: float
    pixel: float
    base_image: float
    base_pixel: float
    sensitivity: float
    source: str


@dataclass(frozen=True)
class Timing:
    """Wall-clock milliseconds. backend_ms is the whole backend call of the batch this image was in
    (batch_size images); preprocess_ms / postprocess_ms are this image's own."""

    preprocess_ms: float
    backend_ms: float
    postprocess_ms: float
    batch_size: int

    @property
    def backend_ms_per_image(self) -> float:
        return self.backend_ms / max(self.batch_size, 1)


@dataclass(frozen=True, eq=False)
class Result:
    """One image's prediction, or its error.

    score: raw image score (the bundle's ScoreConfig.image_score of the anomaly map; NaN on error).
    normalized_score: score / thresholds.image, so 1.0 is exactly on the decision threshold, 2.0 twice it,
        and `is_anomaly == (normalized_score > 1.0)`; 0 for a perfectly flat map.
    is_anomaly: score > thresholds.image.
    anomaly_map: (H, W) float32 at the input's resolution (bilinear resize of the model's S x S map, raw
        map units, comparable with thresholds.pixel).
    mask: (H, W) bool, anomaly_map > thresholds.pixel.
    token_mask: (g, g) bool, the tokens the test-time mask (adaptive or nearest-normal) chose to inpaint (g = grid
        side); for a tiled image (T, g, g), tile t's tokens covering the box tiles[t].
    tiles: None, or for a tiled image the T tiles (aminet_edge.tiling.Box: y, x, height, width in input pixels).
    error: None, or the exception (InputError for a bad image) that stopped this image; then the
        arrays are None, score is NaN and is_anomaly is False. Single-image `predict` raises instead.
    """

    source: str
    index: int
    score: float = math.nan
    normalized_score: float = math.nan
    is_anomaly: bool = False
    anomaly_map: np.ndarray | None = None
    mask: np.ndarray | None = None
    token_mask: np.ndarray | None = None
    thresholds: Thresholds | None = None
    timing: Timing | None = None
    backend: str = ""
    error: BaseException | None = field(default=None)
    tiles: tuple[Any, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def backend_ms(self) -> float:
        """The backend's time for this image's batch in ms (NaN on error)."""
        return math.nan if self.timing is None else self.timing.backend_ms

    def raise_for_error(self) -> "Result":
        """Raise the stored error, if any; return self otherwise (chainable)."""
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): source, scores, decision, thresholds, timing, error."""
        out: dict[str, Any] = {"source": self.source, "index": self.index, "ok": self.ok}
        if self.ok:
            assert self.thresholds is not None and self.timing is not None and self.mask is not None
            out.update({
                "score": self.score, "normalized_score": self.normalized_score, "is_anomaly": self.is_anomaly,
                "image_threshold": self.thresholds.image, "pixel_threshold": self.thresholds.pixel,
                "threshold_source": self.thresholds.source, "sensitivity": self.thresholds.sensitivity,
                "anomalous_pixel_fraction": float(self.mask.mean()),
                "height": int(self.mask.shape[0]), "width": int(self.mask.shape[1]),
                "backend": self.backend, "backend_ms": self.timing.backend_ms,
                "batch_size": self.timing.batch_size,
            } | ({} if self.tiles is None else {"tiles": len(self.tiles)}))
        else:
            out["error"] = str(self.error)
            out["error_type"] = type(self.error).__name__
        return out

    def __repr__(self) -> str:
        if not self.ok:
            return f"Result({self.source!r}, error={self.error!s})"
        shape = None if self.anomaly_map is None else self.anomaly_map.shape
        return (f"Result({self.source!r}, score={self.score:.6g}, normalized={self.normalized_score:.3f}, "
                f"is_anomaly={self.is_anomaly}, map={shape}, backend={self.backend!r})")
