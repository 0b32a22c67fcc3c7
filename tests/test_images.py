"""Image reading and preprocessing: formats, bit depths, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aminet_edge.data.images import ImageReadError, preprocess, read_image, read_mask, to_rgb_float


def test_gray_rgba_and_16bit(tmp_path: Path) -> None:
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 1], gray / 255.0, atol=1e-7)
    deep = (np.arange(64 * 48) * 20).astype(np.uint16).reshape(48, 64)
    Image.fromarray(deep).save(tmp_path / "d.png")  # 16-bit grayscale PNG
    np.testing.assert_allclose(read_image(tmp_path / "d.png")[:, :, 0], deep / 65535.0, atol=1e-6)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png")[0, 0], [200 / 255, 0, 0], atol=1e-7)


def test_arrays_uint8_uint16_float_bgr() -> None:
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    assert to_rgb_float(rgb)[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert to_rgb_float(rgb, bgr=True)[0, 0].tolist() == [0.0, 0.0, 1.0]
    assert to_rgb_float(np.full((10, 10), 65535, np.uint16)).min() == 1.0
    assert to_rgb_float(np.full((10, 10, 1), 0.25, np.float64)).shape == (10, 10, 3)


@pytest.mark.parametrize("array, message", [
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    (np.zeros((4, 40, 3), np.uint8), "too small"),
    (np.full((10, 10), np.nan, np.float32), "NaN"),
    (np.full((10, 10), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((10, 10), np.int64), "dtype int64"),
    (np.zeros((0, 10)), "too small"),
])
def test_bad_arrays_are_named(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageReadError, match=message) as info:
        to_rgb_float(array, name="frame 3")
    assert "frame 3" in str(info.value)


def test_bad_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name, message in (("empty.png", "0 bytes"), ("junk.png", "not a readable image"), ("gone.png", "not found")):
        with pytest.raises(ImageReadError, match=message) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)


def test_preprocess_normalises_and_resizes_without_rounding() -> None:
    image = np.full((40, 60, 3), 0.5, np.float32)
    image[..., 2] = 0.25
    x = preprocess(image, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.5))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(x[2], -0.5, atol=1e-6)


def test_read_mask_nearest(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", 4)
    assert out.dtype == bool and out.tolist() == [[True, True, False, False]] * 2 + [[False] * 4] * 2
