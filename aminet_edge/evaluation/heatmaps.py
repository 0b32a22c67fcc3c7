"""PNG overlays: image | anomaly map over the image | masks (ground truth and prediction). NumPy + PIL only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OVERLAY_MAX_SIDE = 1024  # overlays of larger inputs are downscaled (three panels side by side)


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to (…, 3) float32 RGB with a jet-like colormap (blue -> red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([r, g, b], axis=-1).astype(np.float32)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the contour)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def heat_blend(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: the heatmap of `amap` (scaled by [vmin, vmax]) blended over `image`.

    image: (H, W, 3) float in [0, 1]; amap: (H, W) scores.
    """
    if amap.shape != image.shape[:2]:
        raise ValueError(f"map {amap.shape} and image {image.shape[:2]} sizes differ")
    scaled = (amap - vmin) / max(vmax - vmin, 1e-12)
    return np.clip((1 - alpha) * image + alpha * jet(scaled), 0, 1)


def overlay_panels(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float,
                   truth: np.ndarray | None = None, pred: np.ndarray | None = None,
                   alpha: float = 0.5) -> np.ndarray:
    """(H, 3W, 3) uint8: image | heatmap blended over it | image with truth (green) / prediction (red).

    image: (H, W, 3) float in [0, 1]; amap: (H, W) scores, scaled by [vmin, vmax] for the colours.
    """
    heat = heat_blend(image, amap, vmin, vmax, alpha)
    masks = image.copy()
    if pred is not None:
        masks[pred] = 0.6 * masks[pred] + 0.4 * np.array([1.0, 0.0, 0.0], np.float32)
    if truth is not None:
        masks[_edges(truth)] = (0.0, 1.0, 0.0)
    panels = np.concatenate([image, heat, masks], axis=1)
    return (np.clip(panels, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, amap: np.ndarray, truth: np.ndarray | None = None,
                 vmin: float = 0.0, vmax: float = 1.0, pred_mask: np.ndarray | None = None) -> Path:
    """Write `overlay_panels(...)` as a PNG at `path` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_panels(image, amap, vmin, vmax, truth, pred_mask)).save(path)
    return path


def result_overlay(image: np.ndarray, result: Any, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """`overlay_panels` of a Detector Result: (h, 3w, 3) uint8, downscaled to `max_side` at most.

    image: (H, W, 3) float RGB in [0, 1] at the Result's map resolution. The pixel threshold sits at
    mid-scale of the colours: red above it, blue well below.
    """
    from aminet_edge.data.images import resize_plane, resize_rgb

    amap, mask = result.anomaly_map, result.mask
    h, w = amap.shape
    scale = max_side / max(h, w)
    if scale < 1:
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        image, amap = resize_rgb(image, hw), resize_plane(amap, hw)
        mask = amap > result.thresholds.pixel
    return overlay_panels(image, amap, 0.0, 2.0 * result.thresholds.pixel, None, mask)
