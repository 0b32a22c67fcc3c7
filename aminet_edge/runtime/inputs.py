"""Input normalisation for `Detector.predict`: whatever the caller passes -> validated (H, W, 3) float32 RGB.

Accepted, per image:
- a path (str or os.PathLike) to an image file (anything Pillow reads; 8- or 16-bit, grey, RGB, RGBA);
- a PIL image (any mode Pillow can convert; 16-bit grey kept at 16 bits);
- a numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of dtype uint8 (0..255), uint16 (0..65535) or
  float16/32/64 in [0, 1]. Colour order RGB(A) unless `bgr=True` (OpenCV frames: BGR(A)); alpha is dropped;
- a torch tensor (only when torch is already imported by the caller; this module never imports it):
  (H, W), (1, H, W) or (3, H, W), torchvision's channel-first layout, same dtypes and ranges as numpy.
A batch is a list or tuple of those, a numpy array (N, H, W, C), or a torch tensor (N, C, H, W).

Every problem raises `InputError` naming the input (its path, or `input[i]` for in-memory images) and
what is wrong. Size limits: each side >= MIN_SIDE and <= MAX_SIDE pixels, H * W <= MAX_PIXELS (a path's
size is checked from its header, before the pixels are decoded).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_SIDE = 8  # pixels; below this the image carries no usable texture at any model resolution
MAX_SIDE = 20_000  # pixels
MAX_PIXELS = 100_000_000  # 100 megapixels: 1.2 GB as float32 RGB, the working copy before resizing


class InputError(ValueError):
    """One input image is unusable. `source` names it (path or `input[i]`), `index` is its batch position."""

    def __init__(self, source: str, problem: str, index: int | None = None) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
        self.index = index


@dataclass(frozen=True)
class Limits:
    """Image size limits (pixels). The defaults are the module constants; the decoder itself
    (aminet_edge.data.images) refuses more than its own MAX_PIXELS whatever max_pixels says."""

    min_side: int = MIN_SIDE
    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS


def is_torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor, decided without importing torch (a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, getattr(torch, "Tensor", ()))


def _is_pil(x: Any) -> bool:
    image_mod = sys.modules.get("PIL.Image")
    return image_mod is not None and isinstance(x, image_mod.Image)


def split_batch(x: Any) -> tuple[list[Any], bool]:
    """(items, is_batch): a list/tuple, a 4-D numpy array or a 4-D torch tensor is a batch; else one image.

    Raises InputError("input", ...) for an empty batch.
    """
    if isinstance(x, (list, tuple)):
        items, batch = list(x), True
    elif isinstance(x, np.ndarray) and x.ndim == 4:
        items, batch = list(x), True
    elif is_torch_tensor(x) and x.ndim == 4:
        items, batch = list(x.unbind(0)), True
    else:
        return [x], False
    if not items:
        raise InputError("input", "empty batch: pass at least one image")
    return items, batch


def batch_items(images: Iterable[Any] | np.ndarray) -> list[Any]:
    """The images of a `predict_batch` argument as a list: a list/tuple, a 4-D array or tensor
    (split_batch), or any other iterable. Raises InputError("input", ...) for an empty batch."""
    if isinstance(images, (list, tuple, np.ndarray)) or hasattr(images, "unbind"):
        return split_batch(images if not isinstance(images, tuple) else list(images))[0]
    items = list(images)
    if not items:
        raise InputError("input", "empty batch: pass at least one image")
    return items


def describe(x: Any, index: int | None) -> str:
    """How an input is named in errors and results: its path, else `input[i]` (or `input` for one image)."""
    if isinstance(x, (str, os.PathLike)):
        return str(x) if str(x).strip() else f"{'input' if index is None else f'input[{index}]'} (path {str(x)!r})"
    return "input" if index is None else f"input[{index}]"


def check_size(source: str, height: int, width: int, limits: Limits, index: int | None = None) -> None:
    """InputError unless min_side <= H, W <= max_side and H * W <= max_pixels."""
    if min(height, width) < limits.min_side:
        raise InputError(source, f"image is {width}x{height} px (WxH); each side must be >= {limits.min_side} "
                                 f"px (numpy arrays are HxWxC: for CxHxW use arr.transpose(1, 2, 0))", index)
    if max(height, width) > limits.max_side:
        raise InputError(source, f"image is {width}x{height} px (WxH); each side must be <= {limits.max_side} px "
                                 f"(tile or downscale it)", index)
    if height * width > limits.max_pixels:
        raise InputError(source, f"image has {height * width / 1e6:.1f} megapixels; the limit is "
                                 f"{limits.max_pixels / 1e6:.0f} (tile or downscale it, or raise max_pixels)", index)


def _from_path(path: Path, source: str, limits: Limits, index: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from aminet_edge.data.images import ImageReadError, read_image

    if not path.exists():
        raise InputError(source, "file not found", index)
    if not path.is_file():
        raise InputError(source, "not a file", index)
    if path.stat().st_size == 0:
        raise InputError(source, "empty file (0 bytes)", index)
    try:
        with Image.open(path) as img:  # header only: reject huge images before decoding them
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise InputError(source, f"image too large to decode safely ({exc})", index) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(source, f"not a readable image ({type(exc).__name__}: {exc})", index) from exc
    check_size(source, height, width, limits, index)
    try:
        image = read_image(path)
    except ImageReadError as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        raise InputError(source, f"unreadable or corrupt image ({problem})", index) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated data etc.
        raise InputError(source, f"unreadable or corrupt image ({type(exc).__name__}: {exc})", index) from exc
    return image


def _from_torch(t: Any) -> np.ndarray:
    """A channel-first tensor (H, W), (1, H, W), (3, H, W) or (4, H, W) as a numpy HxW(xC) array."""
    arr = t.detach().cpu()
    if str(arr.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        arr = arr.float()
    arr = arr.numpy()
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3, 4):
            raise ValueError(f"torch tensors are channel-first (C, H, W) with C in 1, 3, 4; got shape "
                             f"{tuple(arr.shape)}")
        arr = np.moveaxis(arr, 0, -1)
    return arr


def array_to_rgb(arr: np.ndarray, source: str, bgr: bool, limits: Limits,
                 index: int | None = None) -> np.ndarray:
    """Validate an HxW(xC) array and convert it to (H, W, 3) float32 RGB in [0, 1].

    The conversion is aminet_edge.data.images.to_rgb_float, the one training uses on decoded files, so
    an array and the same image read from a file give identical results.
    """
    from aminet_edge.data.images import ImageReadError, to_rgb_float

    if not isinstance(arr, np.ndarray):
        raise InputError(source, f"unsupported input type {type(arr).__name__}", index)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = " (this looks channel-first: for CxHxW use arr.transpose(1, 2, 0))"
        raise InputError(source, f"array of shape {arr.shape}: expected (H, W), (H, W, 1), (H, W, 3) or "
                                 f"(H, W, 4){hint}", index)
    check_size(source, arr.shape[0], arr.shape[1], limits, index)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InputError(source, f"{bad} NaN or infinite value(s) in the image", index)
    try:
        return to_rgb_float(arr, bgr=bgr, name=source)
    except ImageReadError as exc:
        problem = str(exc).removeprefix(f"{source}: ")
        raise InputError(source, problem, index) from exc


def _uint8_rgb(arr: np.ndarray, source: str, bgr: bool, limits: Limits, index: int | None) -> np.ndarray:
    """A uint8 HxW(xC) array as (H, W, 3) uint8 RGB: the channel handling of to_rgb_float, without scaling."""
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        return array_to_rgb(arr, source, bgr, limits, index)  # raises its InputError naming the shape
    from aminet_edge.data.images import rgb_channels

    check_size(source, arr.shape[0], arr.shape[1], limits, index)
    return rgb_channels(arr[:, :, None] if arr.ndim == 2 else arr, bgr)


def to_frame(x: Any, index: int | None = None, bgr: bool = False, limits: Limits = Limits()) -> np.ndarray:
    """One input as an (H, W, 3) RGB frame for backends that preprocess on their device.

    8-bit inputs (uint8 arrays and tensors, 8-bit files and PIL images) stay uint8 (0..255), a quarter of
    the bytes to upload; anything else is to_rgb's float32 in [0, 1]. Either way `frame / 255` (uint8) or
    `frame` (float32) equals to_rgb(x) exactly, so the device sees the same pixels as the host path.
    """
    source = describe(x, index)
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return _uint8_rgb(x, source, bgr, limits, index)
    if is_torch_tensor(x) and str(x.dtype) == "torch.uint8":
        try:
            arr = _from_torch(x)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InputError(source, str(exc), index) from exc
        return _uint8_rgb(arr, source, bgr, limits, index)
    rgb = to_rgb(x, index, bgr, limits)
    if isinstance(x, (str, os.PathLike)) or _is_pil(x):  # decoded 8-bit images come back as k / 255
        q = np.rint(rgb * np.float32(255.0))
        if q.max(initial=0.0) <= 255.0:
            u8 = q.astype(np.uint8)
            if np.array_equal(u8.astype(np.float32) / np.float32(255.0), rgb):
                return u8
    return rgb


def to_rgb(x: Any, index: int | None = None, bgr: bool = False, limits: Limits = Limits()) -> np.ndarray:
    """One input (see the module docstring) -> (H, W, 3) float32 RGB in [0, 1]; InputError if unusable."""
    source = describe(x, index)
    if isinstance(x, (str, os.PathLike)):
        if not str(x).strip():  # Path("") is ".", the working directory
            raise InputError(source, "empty path: name an image file", index)
        return _from_path(Path(x), source, limits, index)
    if _is_pil(x):
        from aminet_edge.data.images import ImageReadError, pil_to_rgb_float

        check_size(source, x.height, x.width, limits, index)
        try:
            return pil_to_rgb_float(x, source)  # as files are read: PIL images are RGB, `bgr` does not apply
        except (ImageReadError, ValueError, OSError) as exc:
            problem = str(exc).removeprefix(f"{source}: ")
            raise InputError(source, f"unusable PIL image (mode {x.mode}): {problem}", index) from exc
    if is_torch_tensor(x):
        try:
            arr = _from_torch(x)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InputError(source, str(exc), index) from exc
        return array_to_rgb(arr, source, bgr, limits, index)
    if isinstance(x, np.ndarray):
        return array_to_rgb(x, source, bgr, limits, index)
    if x is None:
        raise InputError(source, "got None instead of an image", index)
    raise InputError(source, f"unsupported input type {type(x).__module__}.{type(x).__name__}: pass a path, "
                             f"a PIL image, a numpy array or a torch tensor", index)
