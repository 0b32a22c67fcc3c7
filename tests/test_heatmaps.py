"""Heatmap overlays: panel layout, colours at the ends of the scale, mask drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aminet_edge.evaluation.heatmaps import jet, overlay_panels, save_overlay


def test_jet_ends() -> None:
    np.testing.assert_allclose(jet(np.array([0.0, 1.0])), [[0, 0, 0.5], [0.5, 0, 0]])


def test_overlay(tmp_path: Path) -> None:
    image = np.full((10, 10, 3), 0.5, np.float32)
    amap = np.zeros((10, 10), np.float32)
    amap[:, 5:] = 1.0
    truth = np.zeros((10, 10), bool)
    truth[2:7, 2:7] = True
    out = overlay_panels(image, amap, 0.0, 1.0, truth=truth, pred=truth, alpha=0.5)
    assert out.shape == (10, 30, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 128, 128]  # panel 1: the image
    assert out[0, 19, 0] > out[0, 19, 2] and out[0, 10, 2] > out[0, 10, 0]  # hot right, cold left
    assert out[2, 22].tolist() == [0, 255, 0]  # truth contour
    assert out[4, 24, 0] > out[4, 24, 1]  # prediction tinted red inside
    path = save_overlay(tmp_path / "x" / "o.png", image, amap, truth, 0.0, 1.0)
    assert np.array_equal(np.asarray(Image.open(path)), overlay_panels(image, amap, 0.0, 1.0, truth))
