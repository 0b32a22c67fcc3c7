"""Data-set layouts: MVTec AD, BTAD, plain folders, few-shot selection, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aminet_edge.data.datasets import detect_layout, load_dataset, select_few_shot
from aminet_edge.data.synthetic import make_synthetic_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_btad_layout(tmp_path: Path) -> None:
    for rel in ("train/ok/0.bmp", "train/ok/1.BMP", "test/ok/5.bmp", "test/ko/7.bmp", "test/ko/8.bmp",
                "ground_truth/ko/7.png"):
        touch_image(tmp_path / rel)
    split = load_dataset(tmp_path)
    assert split.layout == "btad" and len(split.train) == 2
    assert [(s.label, s.defect_type, s.mask_path is not None) for s in split.test] == \
        [(1, "ko", True), (1, "ko", False), (0, "good", False)]


def test_plain_folder_layouts(tmp_path: Path) -> None:
    for rel in ("good/a.png", "good/b.jpg", "defective/c.png", "masks/c.png"):
        touch_image(tmp_path / "f" / rel)
    split = load_dataset(tmp_path / "f")
    assert split.layout == "folder" and len(split.train) == 2
    assert [s.label for s in split.test] == [0, 0, 1] and split.test[2].mask_path.endswith("masks/c.png")
    touch_image(tmp_path / "imgs" / "x.tif")
    assert detect_layout(tmp_path / "imgs") == "images"


def test_unknown_layout_lists_expectations(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="MVTec AD .* BTAD"):
        load_dataset(tmp_path / "nothing")


def test_mvtec_layout_on_synthetic(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, n_train=4, n_test_good=2, n_test_defect=1, size=32)
    split = load_dataset(root)
    assert split.layout == "mvtec" and len(split.train) == 4
    assert sum(s.label for s in split.test) == 3 and all(s.mask_path for s in split.test if s.label)


@pytest.mark.skipif(not (SHARED / "mvtec_bottle").is_dir(), reason="shared data not present")
def test_shared_data_counts() -> None:
    bottle = load_dataset(SHARED / "mvtec_bottle")
    assert (len(bottle.train), len(bottle.test), sum(s.label for s in bottle.test)) == (209, 83, 63)
    tile = load_dataset(SHARED / "magnetic_tile")
    assert (len(tile.train), len(tile.test)) == (762, 582)


def test_few_shot_is_deterministic() -> None:
    items = list(range(20))
    a = select_few_shot(items, 5, seed=1)  # type: ignore[arg-type]
    assert a == select_few_shot(items, 5, seed=1) and len(a) == 5 and a == sorted(a)  # type: ignore[arg-type]
    assert a != select_few_shot(items, 5, seed=2)  # type: ignore[arg-type]
