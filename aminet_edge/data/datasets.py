"""Data-set layouts: MVTec AD, BTAD and plain folders of good/defective images.

MVTec AD: ROOT/train/good/*, ROOT/test/<type>/*, ROOT/ground_truth/<type>/<stem>_mask.*
BTAD:     ROOT/train/ok/*, ROOT/test/ok/*, ROOT/test/ko/*, ROOT/ground_truth/ko/<stem>.*
Folder:   ROOT/good/*, ROOT/defective/* (or bad/, ng/), optional ROOT/masks/<stem>.* ; every 5th good
          image (sorted by name) is held out for the test split, the rest train. Without defective
          images, or for a folder of images only, everything is training data.
Images: .png .jpg .jpeg .bmp .tif .tiff (any case); hidden files are skipped; order is sorted by name.
A defective test image without a mask file gets mask_path None: it counts for image metrics, not
pixel metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BAD_FOLDERS = ("defective", "bad", "ng")
FOLDER_TEST_EVERY = 5  # folder layout: good images 4, 9, 14, ... are test images (20 %)


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
    """Image files directly in `folder`, sorted by name (extensions case-insensitive, hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def _mask_index(folder: Path) -> dict[str, str]:
    """Image files in `folder` by stem (first by sorted name when stems repeat)."""
    index: dict[str, str] = {}
    for p in list_images(folder):
        index.setdefault(p.stem, str(p))
    return index


def _mask_for(index: dict[str, str], stem: str, suffixes: Sequence[str]) -> str | None:
    """The mask `<stem><suffix>.<any image ext>` for the first suffix that exists, or None."""
    return next((index[stem + s] for s in suffixes if stem + s in index), None)


def _test_samples(test_root: Path, gt_root: Path, good: str, mask_suffixes: Sequence[str]) -> list[Sample]:
    samples = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        kind = folder.name
        if kind == good:
            samples += [Sample(str(img), 0) for img in list_images(folder)]
            continue
        masks = _mask_index(gt_root / kind)
        samples += [Sample(str(img), 1, kind, _mask_for(masks, img.stem, mask_suffixes))
                    for img in list_images(folder)]
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
        f"a folder with good/ and defective/ (or bad/, ng/; masks/ optional), or a folder of normal images")


def load_dataset(root: str | Path) -> Split:
    """The train/test split of the data set at `root`, layout auto-detected, order deterministic."""
    root = Path(root)
    layout = detect_layout(root)
    test: list[Sample] = []
    if layout in ("mvtec", "btad"):
        good = "good" if layout == "mvtec" else "ok"
        train = [Sample(str(p), 0) for p in list_images(root / "train" / good)]
        if (root / "test").is_dir():
            suffixes = ("_mask", "") if layout == "mvtec" else ("", "_mask")
            test = _test_samples(root / "test", root / "ground_truth", good, suffixes)
    elif layout == "folder":
        goods = [Sample(str(p), 0) for p in list_images(root / "good")]
        masks = _mask_index(root / "masks")
        test = [Sample(str(p), 1, name, _mask_for(masks, p.stem, ("", "_mask")))
                for name in BAD_FOLDERS for p in list_images(root / name)]
        held = set(range(FOLDER_TEST_EVERY - 1, len(goods), FOLDER_TEST_EVERY)) if test else set()
        train = [s for i, s in enumerate(goods) if i not in held]
        test = [goods[i] for i in sorted(held)] + test
    else:
        train = [Sample(str(p), 0) for p in list_images(root)]
    if not train:
        raise ValueError(f"{root}: {layout} layout but no training images found")
    return Split(train, test, layout)


def load_unified(roots: Sequence[str | Path]) -> tuple[list[Sample], dict[str, list[Sample]]]:
    """Several categories for one (unified) model: every root's training images in root order, and
    each category's test images keyed by the category (the root's folder name)."""
    train: list[Sample] = []
    tests: dict[str, list[Sample]] = {}
    for root in roots:
        name = Path(root).resolve().name
        if name in tests:
            raise ValueError(f"two data roots are both named {name!r}; category names must differ")
        split = load_dataset(root)
        train += split.train
        tests[name] = split.test
    return train, tests


def select_few_shot(samples: Sequence[Sample], k: int, seed: int = 0) -> list[Sample]:
    """k samples chosen deterministically from `seed` (numpy Generator), kept in their original order."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"few-shot k must be between 1 and the {len(samples)} training images, got {k}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(samples), size=k, replace=False))
    return [samples[i] for i in chosen]
