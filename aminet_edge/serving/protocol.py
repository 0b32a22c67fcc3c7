"""The wire contract between `RemoteDetector` and the served model (cpu and gpu repositories alike).

One request = one image (Triton's dynamic batcher groups requests from all cameras into batches):

| tensor       | dir | type   | dims (per request) | meaning                                                    |
|--------------|-----|--------|--------------------|------------------------------------------------------------|
| IMAGE        | in  | UINT8  | [-1] (ragged)      | the image: an image file's bytes (PNG, JPEG, BMP, TIFF...) |
|              |     |        |                    | or an array in NumPy's .npy format (allow_pickle=False)     |
| MAP_MAX_SIDE | in  | INT32  | [1]                | 0: send the model's S x S map (tiled bundle: the stitched  |
|              |     |        |                    | map at the input's H x W); k > 0: the map resized to       |
|              |     |        |                    | the input's aspect, longest side min(k, input's)           |
| SCORE        | out | FP32   | [1]                | raw image score                                            |
| AMAP         | out | FP32   | [-1, -1]           | raw anomaly map (S x S, or as MAP_MAX_SIDE asked)           |
| TOKEN_MASK   | out | BOOL   | [-1]               | (L,) tokens the test-time mask inpainted (tiled: (T * L,),  |
|              |     |        |                    | tile after tile)                                           |
| IMAGE_SIZE   | out | INT32  | [2]                | the decoded input's (H, W) in pixels                        |

The decision (thresholds, sensitivity, mask) is the client's, with `aminet_edge.runtime.detector.decide`,
so a served model and an in-process `Detector` decide identically. Bytes travel as UINT8 rather than
Triton BYTES: the Python backend stub shipped with tritonserver 2.51 misreads BYTES (and `as_numpy()`)
under NumPy 2, while DLPack hand-over is exact (aminet_edge.serving.triton_model).

One request carries one image: IMAGE of shape [1, N]; a request with more (e.g. [2, N]) is refused
with an InputError rather than answered for its first image.
Errors for one image come back as the request's error, HTTP 400, with the message "InputError: <problem>"
(`INPUT_ERROR`); the client turns it into that image's `InputError`. Torch-free.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.runtime.inputs import InputError, Limits, check_size, describe, is_torch_tensor, to_rgb

MODEL_NAME = "aminet"  # the served model's default name
INPUTS = ("IMAGE", "MAP_MAX_SIDE")
OUTPUTS = ("SCORE", "AMAP", "TOKEN_MASK", "IMAGE_SIZE")
INPUT_ERROR = "InputError: "
BUNDLE_PARAMETER = "aminet_bundle"  # model config parameter: the bundle's config.json (thresholds, sizes)
NPY_MAGIC = b"\x93NUMPY"


def map_hw(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a map for an H x W input with longest side at most `max_side` (aspect kept, >= 1 px)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


# -- client side --------------------------------------------------------------------------------
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_image(x: Any, index: int | None, bgr: bool, limits: Limits) -> bytes:
    """One input as IMAGE bytes, converted exactly as `Detector.predict` would convert it.

    Paths: the file's bytes (decoded by the server, as Detector decodes files). numpy arrays: sent as
    they are (.npy; BGR(A) reordered to RGB(A) here, an exact permutation). PIL images: 8-bit modes as
    their RGB uint8 array, others as float32 RGB (`to_rgb`), torch tensors as float32 RGB. InputError
    (naming the input) for what is unusable before sending: a missing or empty file, an unsupported type.
    """
    source = describe(x, index)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise InputError(source, "file not found" if not path.exists() else "not a file", index)
        data = path.read_bytes()
        if not data:
            raise InputError(source, "empty file (0 bytes)", index)
        return data
    if isinstance(x, np.ndarray):
        if bgr and x.ndim == 3 and x.shape[2] in (3, 4):
            x = x[:, :, [2, 1, 0, 3][:x.shape[2]]]
        return _npy(x)
    image_mod = sys.modules.get("PIL.Image")
    is_pil = image_mod is not None and isinstance(x, image_mod.Image)
    if is_pil and not x.mode.startswith(("I", "F")):
        check_size(source, x.height, x.width, limits, index)
        return _npy(np.asarray(x.convert("RGB")))  # what pil_to_rgb_float scales for 8-bit modes
    if is_pil or is_torch_tensor(x):
        return _npy(to_rgb(x, index, bgr, limits))
    if x is None:
        raise InputError(source, "got None instead of an image", index)
    raise InputError(source, f"unsupported input type {type(x).__module__}.{type(x).__name__}: pass a path, "
                             f"a PIL image, a numpy array or a torch tensor", index)


# -- server side --------------------------------------------------------------------------------
def decode_image(data: bytes, limits: Limits = Limits(), source: str = "image") -> np.ndarray:
    """IMAGE bytes -> what `Detector.infer` takes: the .npy array as sent, or a file decoded to (H, W, 3)
    float32 RGB exactly as `aminet_edge.data.images.read_image` decodes a file. InputError if unusable."""
    from PIL import Image, UnidentifiedImageError

    from aminet_edge.data.images import ImageReadError, pil_to_rgb_float

    if not data:
        raise InputError(source, "empty image (0 bytes)")
    if data.startswith(NPY_MAGIC):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(source, f"corrupt .npy array ({type(exc).__name__}: {exc})") from exc
        return arr  # validated by Detector.infer, as Detector.predict validates arrays
    try:
        with Image.open(io.BytesIO(data)) as im:  # header first: refuse huge images before decoding
            width, height = im.size
            check_size(source, height, width, limits)
            im.load()
            return pil_to_rgb_float(im, source)
    except InputError:
        raise
    except ImageReadError as exc:
        raise InputError(source, str(exc).removeprefix(f"{source}: ")) from exc
    except UnidentifiedImageError as exc:  # its message names the in-memory buffer, not the problem
        raise InputError(source, f"not a readable image: no image format recognised in its {len(data)} bytes "
                                 f"(send an image file's bytes or a .npy array)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(source, f"not a readable image ({type(exc).__name__}: {exc})") from exc

