"""Data-set layouts: MVTec AD, BTAD, plain folders, few-shot selection, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aminet_edge.data.datasets import detect_layout, load_dataset, load_unified, select_few_shot
from aminet_edge.data.images import read_image, read_mask
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
    goods = [f"good/{i}.png" for i in range(7)]
    for rel in (*goods, "good/.hidden.png", "defective/c.png", "ng/d.JPG", "masks/c.bmp"):
        touch_image(tmp_path / "f" / rel)
    split = load_dataset(tmp_path / "f")
    assert split.layout == "folder"
    assert [Path(s.path).name for s in split.train] == ["0.png", "1.png", "2.png", "3.png", "5.png", "6.png"]
    assert [(Path(s.path).name, s.label, s.defect_type) for s in split.test] == \
        [("4.png", 0, "good"), ("c.png", 1, "defective"), ("d.JPG", 1, "ng")]  # every 5th good is held out
    assert split.test[1].mask_path.endswith("masks/c.bmp") and split.test[2].mask_path is None
    for rel in goods[:3]:
        touch_image(tmp_path / "g" / rel)
    assert len(load_dataset(tmp_path / "g").train) == 3  # no defective images: all good images train
    touch_image(tmp_path / "imgs" / "x.tif")
    assert detect_layout(tmp_path / "imgs") == "images" and len(load_dataset(tmp_path / "imgs").train) == 1


def test_unknown_layout_lists_expectations(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="MVTec AD .* BTAD"):
        load_dataset(tmp_path / "nothing")


def test_mvtec_layout_on_synthetic(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, n_train=4, n_test_good=2, n_test_defect=1, size=32)
    split = load_dataset(root)
    assert split.layout == "mvtec" and len(split.train) == 4
    assert sum(s.label for s in split.test) == 3 and all(s.mask_path for s in split.test if s.label)


def test_unified_keys_test_lists_by_category(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "carpet", n_train=3, n_test_good=1, n_test_defect=1, size=32)
    b = make_synthetic_dataset(tmp_path / "grid", n_train=2, n_test_good=2, n_test_defect=0, size=32, seed=1)
    train, tests = load_unified([a, b])
    assert len(train) == 5 and train[0].path.startswith(str(a)) and train[-1].path.startswith(str(b))
    assert {k: len(v) for k, v in tests.items()} == {"carpet": 4, "grid": 2}
    with pytest.raises(ValueError, match="both named 'carpet'"):
        load_unified([a, a])


@pytest.mark.skipif(not (SHARED / "mvtec_bottle").is_dir(), reason="shared data not present")
def test_shared_data() -> None:
    bottle = load_dataset(SHARED / "mvtec_bottle")
    assert (len(bottle.train), len(bottle.test), sum(s.label for s in bottle.test)) == (209, 83, 63)
    assert all(s.mask_path for s in bottle.test if s.label)
    tile = load_dataset(SHARED / "magnetic_tile")
    assert (len(tile.train), len(tile.test), sum(s.label for s in tile.test)) == (762, 582, 392)
    defect = next(s for s in tile.test if s.label)
    image, mask = read_image(defect.path), read_mask(defect.mask_path)
    assert image.shape == (*mask.shape, 3) and np.array_equal(image[..., 0], image[..., 2])  # grey -> RGB


def test_few_shot_is_deterministic() -> None:
    items = list(range(20))
    a = select_few_shot(items, 5, seed=1)  # type: ignore[arg-type]
    assert a == select_few_shot(items, 5, seed=1) and len(a) == 5 and a == sorted(a)  # type: ignore[arg-type]
    assert a != select_few_shot(items, 5, seed=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 1 and the 20"):
        select_few_shot(items, 21)  # type: ignore[arg-type]
