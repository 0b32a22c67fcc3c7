"""Reading and preprocessing images with numpy + PIL (no torch: the edge runtime uses this module).

One contract everywhere: an image is (H, W, 3) float32 RGB in [0, 1]; a mask is (H, W) bool, True =
defect; a model input is (3, S, S) float32, resized to a square S x S (no crop) and normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8  # pixels; smaller inputs carry no usable texture
MAX_PIXELS = 100_000_000  # 100 MP; larger inputs are refused rather than exhausting memory


class ImageReadError(ValueError):
    """An image file or array cannot be used; the message names the input and the problem."""


def _decoded(path: str | Path, what: str) -> Image.Image:
    """The fully decoded PIL image at `path`; ImageReadError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) float32 RGB in [0, 1] (conversion: `pil_to_rgb_float`).

    EXIF orientation is not applied (as the authors' loader), so images stay aligned with their masks.
    Raises ImageReadError for a missing, empty, corrupt or unusable file.
    """
    return pil_to_rgb_float(_decoded(path, "image"), str(path))


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file in pixels, as `read_image` returns it, from its header only.
    ImageReadError for a missing or unreadable file."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def pil_to_rgb_float(im: Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image as (H, W, 3) float32 RGB in [0, 1].

    8-bit modes are scaled by 1/255; 16-bit modes ("I;16*", and "I", which PIL also uses for 16-bit
    files) by 1/65535 whatever the content, so every image of one camera scales alike; "F" is taken as
    [0, 1]. Grey is replicated, alpha dropped (not composited). PIL decodes 16-bit colour PNGs to 8 bits.
    """
    if im.mode.startswith("I"):
        arr = np.asarray(im)
        if im.mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
            raise ImageReadError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
        return to_rgb_float(arr.astype(np.uint16), name=name)
    if im.mode == "F":
        return to_rgb_float(np.asarray(im, dtype=np.float32), name=name)
    return to_rgb_float(np.asarray(im.convert("RGB")), name=name)


def to_rgb_float(array: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
    """A user array as (H, W, 3) float32 RGB in [0, 1].

    Accepts (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16 or float (floats must lie in
    [0, 1]); `bgr` swaps OpenCV channel order. Raises ImageReadError naming `name` and the problem.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, "
                             f"got shape {tuple(np.shape(array))}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(f"{name}: image of {w}x{h} px is too small (each side must be >= {MIN_SIDE})")
    if h * w > MAX_PIXELS:
        raise ImageReadError(f"{name}: image of {w}x{h} px exceeds {MAX_PIXELS:,} pixels")
    if arr.dtype in (np.uint8, np.uint16):
        out = arr.astype(np.float32)
        out /= 255.0 if arr.dtype == np.uint8 else 65535.0  # in place: same values as a new array, no copy
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageReadError(f"{name}: contains NaN or infinite values")
        if out.min() < 0.0 or out.max() > 1.0:
            raise ImageReadError(f"{name}: float images must lie in [0, 1], got [{out.min():.3g}, {out.max():.3g}]")
    else:
        raise ImageReadError(f"{name}: unsupported dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    return rgb_channels(out, bgr)


def rgb_channels(arr: np.ndarray, bgr: bool = False) -> np.ndarray:
    """(H, W, C) with C in 1, 3, 4 -> contiguous (H, W, 3), same dtype: gray repeated, alpha dropped,
    BGR swapped to RGB when `bgr`."""
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if bgr:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def resize_plane(plane: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize one (H, W) float32 plane to size = (height, width) in PIL mode "F" (no 8-bit rounding).

    PIL antialiases when downscaling, as torchvision's Resize(antialias=True) does.
    """
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), resample), dtype=np.float32)


@lru_cache(maxsize=64)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of 1-D linear interpolation, pixel centres aligned (align_corners=False)."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (x - i0).astype(np.float32)
    return i0, i1, (1.0 - w1).astype(np.float32), w1


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (h, w) float32 map to (height, width), pixel centres aligned, edges clamped.

    Same convention as OpenCV INTER_LINEAR / PIL BILINEAR when enlarging; plain (not area-averaged) when
    shrinking, which is harmless for the Gaussian-smoothed map. Returns a new C-contiguous array.
    """
    h, w = amap.shape
    if (h, w) == (height, width):
        return np.array(amap, dtype=np.float32, copy=True)
    from aminet_edge.runtime import host_kernels  # here, not at the top: the runtime package imports this module

    k = host_kernels.kernels()
    if k is not None:  # the same arithmetic in C++ (host_kernels), ~7x faster at 256 -> 512
        return k.resize_map(np.ascontiguousarray(amap, dtype=np.float32), int(height), int(width))
    r0, r1, rw0, rw1 = _linear_taps(h, height)
    c0, c1, cw0, cw1 = _linear_taps(w, width)
    rows = amap[r0] * rw0[:, None] + amap[r1] * rw1[:, None]  # (height, w)
    return np.ascontiguousarray(rows[:, c0] * cw0 + rows[:, c1] * cw1, dtype=np.float32)


def resize_rgb(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 -> (h, w, 3) float32, bilinear; an int size means square."""
    hw = (size, size) if isinstance(size, int) else size
    return np.stack([resize_plane(image[:, :, c], hw) for c in range(3)], axis=2)


def preprocess(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] -> (3, size, size) float32 normalised model input.

    Always a square resize (no crop, aspect not kept), then (x - mean) / std per channel.
    """
    out = np.stack([resize_plane(image[:, :, c], (size, size)) for c in range(3)])  # (3, size, size)
    out -= np.asarray(mean, np.float32)[:, None, None]
    out /= np.asarray(std, np.float32)[:, None, None]
    return out


def preprocess_batch(images: Sequence[np.ndarray], size: int, mean: Sequence[float],
                     std: Sequence[float]) -> np.ndarray:
    """`preprocess` each (H_i, W_i, 3) image and stack them: (B, 3, size, size) float32."""
    if len(images) == 0:
        raise ValueError("preprocess_batch needs at least one image")
    return np.stack([preprocess(image, size, mean, std) for image in images])


def read_mask(path: str | Path, size: int | None = None) -> np.ndarray:
    """A ground-truth mask file as (H, W) bool, True = defect; with `size`, resized (nearest) to size x size.

    Nonzero in any channel is defect, so 0/1 and 0/255 masks both work; JPEG masks are cut at 128
    instead, because compression leaves faint nonzero values around every edge.
    """
    im = _decoded(path, "mask")
    if im.mode not in ("1", "L", "F") and not im.mode.startswith("I"):
        im = im.convert("RGB")  # palette and colour masks: look at the colours, not palette indices
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    mask = arr >= 128 if im.format == "JPEG" else arr != 0
    if size is not None and mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    return mask
