"""Native-resolution tiling: the tile grid of an image and the blend of the tiles' maps into one map.

One implementation (numpy, torch-free) for the runtime (`Detector`, serving), evaluation and calibration.
Settings: config.TileConfig (size and overlap in the input image's own pixels), config.json "tile".

Grid, per axis of n pixels with tile size s and overlap o:
    n <= s: one tile [0, n) (a side shorter than the tile spans it whole; resized like every tile);
    else:   k = ceil((n - s) / (s - o)) + 1 tiles of s px, starting at round(i * (n - s) / (k - 1)),
            i = 0..k-1: evenly spaced, the first on the image's first pixel and the last on its last
            (no padding), so neighbours overlap by at least o px.
Tiles are row-major (top row left to right first). Each tile is cropped, then preprocessed as a whole
image is (resized to the model's image_size; no resize when the tile is already that size).

Blend: each tile's map (the model's S x S) is resized bilinearly to its tile's extent and weighted by
w(y, x) = ramp_y(y) * ramp_x(x), where along an axis ramp(d) = min(1, (d + 0.5) / o) for d pixels from a
tile edge that lies inside the image (1 at an image edge, and everywhere when o = 0). The stitched map is
sum(w * map) / sum(w): a convex combination at every pixel, so a constant map stays constant and tiles
fade into each other over the overlap instead of meeting at a seam. The image score is then taken over
the whole stitched map (ops.image_score, the bundle's ScoreConfig.image_score).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aminet_edge.config import TileConfig
from aminet_edge.data.images import resize_map
from aminet_edge.ops import image_score


@dataclass(frozen=True)
class Box:
    """One tile: top-left corner (y, x) and extent (height, width), pixels of the input image."""

    y: int
    x: int
    height: int
    width: int


def starts(n: int, size: int, overlap: int) -> list[int]:
    """First pixels of the tiles along an axis of n pixels (module docstring)."""
    if n <= size:
        return [0]
    count = math.ceil((n - size) / (size - overlap)) + 1
    return [round(i * (n - size) / (count - 1)) for i in range(count)]


def grid(height: int, width: int, tile: TileConfig) -> list[Box]:
    """The tiles of a height x width image, row-major."""
    h, w = min(tile.size, height), min(tile.size, width)
    return [Box(y, x, h, w) for y in starts(height, tile.size, tile.overlap)
            for x in starts(width, tile.size, tile.overlap)]


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The tile `box` of an (H, W, ...) image (a view)."""
    return image[box.y:box.y + box.height, box.x:box.x + box.width]


def _ramp(start: int, extent: int, n: int, overlap: int) -> np.ndarray:
    """(extent,) float32 blend weights of a tile along one axis of n pixels (module docstring)."""
    w = np.ones(extent, np.float64)
    if overlap > 0:
        d = np.arange(extent, dtype=np.float64) + 0.5
        if start > 0:
            w = np.minimum(w, d / overlap)
        if start + extent < n:
            w = np.minimum(w, d[::-1] / overlap)
    return w.astype(np.float32)


def weights(box: Box, height: int, width: int, overlap: int) -> np.ndarray:
    """(box.height, box.width) float32 blend weights of one tile of a height x width image."""
    return _ramp(box.y, box.height, height, overlap)[:, None] * _ramp(box.x, box.width, width, overlap)[None, :]


def stitch(maps: Sequence[np.ndarray], boxes: Sequence[Box], height: int, width: int, overlap: int) -> np.ndarray:
    """The (height, width) float32 map blended from the tiles' maps (each (h, w), resized to its box)."""
    if len(maps) != len(boxes) or not boxes:
        raise ValueError(f"stitch needs one map per tile, got {len(maps)} maps for {len(boxes)} tiles")
    total = np.zeros((height, width), np.float32)
    norm = np.zeros((height, width), np.float32)
    for amap, box in zip(maps, boxes):
        wgt = weights(box, height, width, overlap)
        window = (slice(box.y, box.y + box.height), slice(box.x, box.x + box.width))
        total[window] += wgt * resize_map(np.asarray(amap, np.float32), box.height, box.width)
        norm[window] += wgt
    return total / norm


def stitch_and_score(maps: Sequence[np.ndarray], boxes: Sequence[Box], height: int, width: int,
                     tile: TileConfig, rule: str) -> tuple[np.ndarray, float]:
    """`stitch` the tiles' maps and take the image score `rule` ("std" / "max") over the stitched map:
    ((height, width) float32, score), the score rounded to float32 as every backend's and the wire's."""
    full = stitch(maps, boxes, height, width, tile.overlap)
    return full, float(np.float32(image_score(full, rule)))
