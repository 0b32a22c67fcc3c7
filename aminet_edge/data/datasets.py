"""Data-set layouts: MVTec AD, BTAD and plain folders of good/defective images.

MVTec AD: ROOT/train/good/*, ROOT/test/<type>/*, ROOT/ground_truth/<type>/<stem>_mask.*
BTAD:     ROOT/train/ok/*, ROOT/test/ok/*, ROOT/test/ko/*, ROOT/ground_truth/ko/<stem>.*
Folder:   ROOT/good/*, ROOT/defective/* (or bad/, ng/), optional ROOT/masks/<stem>.* ; or a folder of
          images only (all normal, for training). The folder layout's test split is the defective
          images plus the good ones, which are also its training images (optimistic for normals).
A defective test image without a mask file gets mask_path None: it counts for image metrics, not
pixel metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD_NAMES = ("good", "ok")
BAD_FOLDERS = ("defective", "bad", "ng")


@dataclass(frozen=True)
class Sample:
    """One image: label 0 = normal, 1 = defective; defect_type "good" for normal images."""

    path: str
    label: int
    defect_type: str = "good"
    mask_path: str | None = None


@dataclass
class Split:
    """Normal training images and the (labelled) test images of one data set."""

    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    layout: str = ""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (extensions case-insensitive)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_mask(folder: Path, stem: str, suffixes: Sequence[str]) -> str | None:
    """The first mask file `folder/<stem><suffix>.<image ext>`, or None."""
    for suffix in suffixes:
        for p in list_images(folder):
            if p.stem == stem + suffix:
                return str(p)
    return None


def _test_samples(test_root: Path, gt_root: Path, good: str, mask_suffixes: Sequence[str]) -> list[Sample]:
    samples = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        kind = folder.name
        for img in list_images(folder):
            if kind == good:
                samples.append(Sample(str(img), 0, "good"))
            else:
                samples.append(Sample(str(img), 1, kind, find_mask(gt_root / kind, img.stem, mask_suffixes)))
    return samples


def detect_layout(root: str | Path) -> str:
    """"mvtec", "btad", "folder" or "images"; ValueError listing what was expected otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data root not found: {root}")
    if (root / "train" / "good").is_dir():
        return "mvtec"
    if (root / "train" / "ok").is_dir():
        return "btad"
    if (root / "good").is_dir():
        return "folder"
    if list_images(root):
        return "images"
    raise ValueError(
        f"{root}: no known data layout. Expected one of: MVTec AD (train/good/, test/<type>/, "
        f"ground_truth/<type>/<name>_mask.png), BTAD (train/ok/, test/ok/, test/ko/, ground_truth/ko/), "
        f"a folder with good/ and defective/ (masks/ optional), or a folder of normal images")


def load_dataset(root: str | Path) -> Split:
    """The train/test split of the data set at `root`, layout auto-detected, order deterministic."""
    root = Path(root)
    layout = detect_layout(root)
    if layout == "mvtec":
        train = [Sample(str(p), 0) for p in list_images(root / "train" / "good")]
        test = _test_samples(root / "test", root / "ground_truth", "good", ("_mask", "")) \
            if (root / "test").is_dir() else []
    elif layout == "btad":
        train = [Sample(str(p), 0) for p in list_images(root / "train" / "ok")]
        test = _test_samples(root / "test", root / "ground_truth", "ok", ("", "_mask")) \
            if (root / "test").is_dir() else []
    elif layout == "folder":
        train = [Sample(str(p), 0) for p in list_images(root / "good")]
        test = list(train)
        for name in BAD_FOLDERS:
            test += [Sample(str(p), 1, name, find_mask(root / "masks", p.stem, ("", "_mask")))
                     for p in list_images(root / name)]
    else:
        train, test = [Sample(str(p), 0) for p in list_images(root)], []
    if not train:
        raise ValueError(f"{root}: {layout} layout but no training images found")
    return Split(train, test, layout)


def select_few_shot(samples: Sequence[Sample], k: int, seed: int = 0) -> list[Sample]:
    """k samples chosen deterministically from `seed`, kept in their original order."""
    if k < 1:
        raise ValueError(f"few-shot k must be >= 1, got {k}")
    if k >= len(samples):
        return list(samples)
    chosen = np.sort(np.random.default_rng(seed).choice(len(samples), size=k, replace=False))
    return [samples[i] for i in chosen]
