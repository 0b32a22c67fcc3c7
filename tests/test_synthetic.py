"""The synthetic default data set: deterministic, and each mask covers exactly what the defect changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aminet_edge.data.synthetic import DEFECTS, add_defect, make_synthetic_dataset, normal_surface


def test_deterministic(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", n_train=3, n_test_good=1, n_test_defect=1, size=32, seed=4)
    b = make_synthetic_dataset(tmp_path / "b", n_train=3, n_test_good=1, n_test_defect=1, size=32, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 + 1 + 2 * len(DEFECTS)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("kind", DEFECTS)
def test_mask_matches_changed_pixels(kind: str) -> None:
    rng = np.random.default_rng(0)
    base = normal_surface(rng, 96)
    image, mask = add_defect(base, kind, rng)
    changed = np.abs(image - base).max(2) > 1e-6
    assert 0.002 < mask.mean() < 0.1  # visible, not huge
    assert not (changed & ~mask).any()  # nothing changed outside the mask
    assert changed[mask].mean() > 0.9  # the mask is (nearly) all changed pixels


def test_normal_images_vary() -> None:
    rng = np.random.default_rng(0)
    a, b = normal_surface(rng, 64), normal_surface(rng, 64)
    assert np.abs(a - b).mean() > 0.01 and 0.3 < a.mean() < 0.8


def test_rerun_replaces_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", n_train=4, n_test_good=1, n_test_defect=1, size=32)
    make_synthetic_dataset(root, n_train=2, n_test_good=1, n_test_defect=1, size=32)
    assert len(list((root / "train" / "good").glob("*.png"))) == 2  # no stale files from the first run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_dataset(tmp_path / "mine", n_train=1, size=32)
