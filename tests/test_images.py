"""Image reading and preprocessing: formats, bit depths, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aminet_edge.data.images import (
    ImageReadError, pil_to_rgb_float, preprocess, preprocess_batch, read_image, read_mask, to_rgb_float)


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


def test_16bit_scaling_does_not_depend_on_content() -> None:
    dark = Image.fromarray(np.full((16, 16), 200, np.int32), mode="I")  # PIL's "I" also holds 16-bit files
    assert pil_to_rgb_float(dark)[0, 0, 0] == pytest.approx(200 / 65535)
    with pytest.raises(ImageReadError, match="0..65535"):
        pil_to_rgb_float(Image.fromarray(np.full((16, 16), 70000, np.int32), mode="I"))


def test_bad_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:-40])
    (tmp_path / "dir.png").mkdir()
    for name, message in (("empty.png", "0 bytes"), ("junk.png", "not a readable"), ("gone.png", "not found"),
                          ("cut.png", "not a readable"), ("dir.png", "not a file")):
        for reader in (read_image, read_mask):
            with pytest.raises(ImageReadError, match=message) as info:
                reader(tmp_path / name)
            assert name in str(info.value)


def test_preprocess_normalises_and_resizes_without_rounding() -> None:
    image = np.full((40, 60, 3), 0.5, np.float32)
    image[..., 2] = 0.25
    x = preprocess(image, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.5))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(x[2], -0.5, atol=1e-6)


def test_preprocess_matches_torch_antialiased_bilinear() -> None:
    """PIL's float bilinear resize equals torch's antialias=True bilinear (torchvision's Resize kernel)
    to float32 rounding, so the torch-free runtime preprocesses as training would with torchvision."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for h, w, size in ((120, 97, 64), (40, 50, 64), (64, 64, 64)):  # down, up, same
        image = rng.random((h, w, 3)).astype(np.float32)
        t = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(size, size),
                                            mode="bilinear", antialias=True, align_corners=False)[0]
        want = ((t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).numpy()
        np.testing.assert_allclose(preprocess(image, size, mean, std), want, atol=1e-5)
    batch = preprocess_batch([image, image[::-1]], 32, mean, std)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], preprocess(image, 32, mean, std))
    with pytest.raises(ValueError, match="at least one"):
        preprocess_batch([], 32, mean, std)


def test_mask_encodings(tmp_path: Path) -> None:
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 1
    Image.fromarray(m).save(tmp_path / "ones.png")  # 0/1 masks count as well as 0/255
    assert read_mask(tmp_path / "ones.png").sum() == 256
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[8:24, 8:24, 2] = 1  # a dim colour vanishes in a luminance conversion, not here
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert read_mask(tmp_path / "colour.png").sum() == 256
    Image.fromarray(m * 255).save(tmp_path / "lossy.jpg", quality=75)
    jpeg = read_mask(tmp_path / "lossy.jpg")
    assert np.array_equal(jpeg, m > 0)  # compression noise around the edge is not defect


def test_read_mask_nearest(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", 4)
    assert out.dtype == bool and out.tolist() == [[True, True, False, False]] * 2 + [[False] * 4] * 2
