"""The embedded default data set: synthetic industrial surfaces with scratches, holes and stains.

Normal images are a brushed-metal-like texture (oriented sinusoids, streaks, grain and a slight
illumination gradient, random phases per image). Each defect is drawn with its exact mask. Written in
the MVTec AD layout so every reader and metric works on it unchanged. Deterministic from `seed`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DEFECTS = ("scratch", "hole", "stain")
MARKER = "synthetic.json"  # written into the root: marks a folder this module may regenerate


def _smooth_noise(rng: np.random.Generator, size: int, sigma_y: float, sigma_x: float) -> np.ndarray:
    """(size, size) float32 Gaussian noise low-passed by a Gaussian of the given sigmas (pixels), unit
    std. Filtered in the Fourier domain (periodic): cheap for any sigma, and anisotropic sigmas give
    the long streaks of brushed metal."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(rng.normal(0, 1, (size, size))) * gain, s=(size, size))
    return (out / out.std()).astype(np.float32)


def normal_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1]: a brushed-metal texture with per-image variation.

    Machining marks (three oriented sinusoids, random phase, orientation jittered), streaks along the
    brushing direction, fine grain, a random linear illumination gradient and a slight colour tint.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.normal(0.15, 0.03)
    u = x * np.cos(angle) + y * np.sin(angle)
    tex = np.zeros((size, size), np.float32)
    for freq, amp in ((6, 0.05), (23, 0.035), (57, 0.025)):
        tex += amp * np.sin(2 * np.pi * (freq * u + rng.uniform())).astype(np.float32)
    scale = size / 128  # streak length and grain follow the image size
    tex += 0.04 * _smooth_noise(rng, size, 12 * scale, 0.7 * scale) + 0.03 * _smooth_noise(rng, size, 0.7, 0.7)
    tex += rng.uniform(-0.05, 0.05) * (x - 0.5) + rng.uniform(-0.05, 0.05) * (y - 0.5)
    gray = 0.55 + rng.uniform(-0.03, 0.03) + tex
    tint = np.array([1.0, 0.98, 0.94], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return np.clip(gray[:, :, None] * tint, 0, 1).astype(np.float32)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of `kind` into a copy of `image`; returns (image, mask (H, W) bool)."""
    size = image.shape[0]
    widen = max(size / 128, 1.0)  # line widths and rims are tuned at 128 px; never thinner
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    out = image.copy()
    if kind == "scratch":
        length, angle = rng.uniform(0.25, 0.45) * size, rng.uniform(0, np.pi)
        bend = rng.uniform(-0.15, 0.15)
        t = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)  # along the scratch
        n = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)  # across it
        n = n - bend * t**2 / size
        mask = (np.abs(t) < length / 2) & (np.abs(n) < rng.uniform(0.8, 1.6) * widen)
        shade = rng.choice([-0.35, 0.35])
        out[mask] = np.clip(out[mask] + shade, 0, 1)
    elif kind == "hole":
        r = rng.uniform(0.04, 0.08) * size
        d = np.hypot(x - cx, y - cy)
        rim_width = 1.5 * widen
        mask = d < r + rim_width
        out[d < r] = 0.08
        rim = (d >= r) & mask
        out[rim] = np.clip(out[rim] + 0.25, 0, 1)
    elif kind == "stain":
        rx, ry = rng.uniform(0.06, 0.12, 2) * size
        blob = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        weight = np.clip(1.2 - blob, 0, 1) ** 0.7
        mask = weight > 0.05
        weight = np.where(mask, weight, 0.0)  # the faint fringe is left untouched, so the mask is exact
        color = np.array(rng.choice([[0.55, 0.35, 0.15], [0.2, 0.3, 0.15], [0.15, 0.15, 0.2]]), np.float32)
        out = out * (1 - 0.6 * weight[:, :, None]) + color * 0.6 * weight[:, :, None]
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECTS)}")
    return out.astype(np.float32), mask


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def make_synthetic_dataset(root: str | Path, n_train: int = 60, n_test_good: int = 10,
                           n_test_defect: int = 10, size: int = 128, seed: int = 0) -> Path:
    """Write the data set under `root` (MVTec AD layout) and return `root`.

    n_test_defect images per defect type; uint8 RGB PNGs of size x size px; masks in
    ground_truth/<type>/<name>_mask.png (255 = defect). A root written by an earlier call is replaced
    (no stale files survive a smaller rerun); any other non-empty root is refused (FileExistsError).
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise FileExistsError(f"{root} is not empty and holds no {MARKER}: choose an empty or new folder")
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    params = {"n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect, "size": size,
              "seed": seed}
    (root / MARKER).write_text(json.dumps({"generator": "aminet_edge.data.synthetic", **params}) + "\n")
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", normal_surface(rng, size))
    for i in range(n_test_good):
        _save(root / "test" / "good" / f"{i:03d}.png", normal_surface(rng, size))
    for kind in DEFECTS:
        for i in range(n_test_defect):
            image, mask = add_defect(normal_surface(rng, size), kind, rng)
            _save(root / "test" / kind / f"{i:03d}.png", image)
            mpath = root / "ground_truth" / kind / f"{i:03d}_mask.png"
            mpath.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mpath)
    return root
