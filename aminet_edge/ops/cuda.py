"""The CUDA backend ("cuda"): ctypes bindings of libaminet_cuda.so (C API: csrc/cuda/aminet_cuda.h).

Torch-free: every function takes raw device pointers (ints) and a stream handle (int, 0 = the legacy
default stream), so torch (`t.data_ptr()`, `torch.cuda.current_stream().cuda_stream`), pycuda
(`int(allocation)`, `stream.handle`) and cuda-python callers can all launch the kernels. Launches are
asynchronous; errors raise RuntimeError with CUDA's message. The dispatcher in aminet_edge.ops wraps this
for torch CUDA tensors.

The library is looked up at $AMINET_CUDA_LIB, else next to this package (aminet_edge/libaminet_cuda.so,
where `cmake --build` copies it). Build it with: cmake -S . -B build && cmake --build build -j
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

LIB_NAME = "libaminet_cuda.so"
API_VERSION = 3  # AMINET_CUDA_API_VERSION of the C API these bindings declare
DTYPE_FLOAT32 = 0
DTYPE_FLOAT16 = 1
SCORE_STD = 0
SCORE_MAX = 1
_BUILD_HINT = "build it with `cmake -S . -B build && cmake --build build -j` (needs nvcc) or set AMINET_CUDA_LIB"

_c_i64, _c_ptr, _c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


def library_path() -> Path | None:
    """Where libaminet_cuda.so would be loaded from, or None when it is nowhere to be found."""
    env = os.environ.get("AMINET_CUDA_LIB")
    if env:
        return Path(env) if Path(env).is_file() else None
    here = Path(__file__).resolve().parent.parent / LIB_NAME  # aminet_edge/libaminet_cuda.so
    return here if here.is_file() else None


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.aminet_cuda_api_version.restype = _c_int
    version = lib.aminet_cuda_api_version()
    if version != API_VERSION:  # other argument lists: calls would pass garbage, not fail
        raise OSError(f"C API version {version}, these bindings need {API_VERSION}: rebuild it ({_BUILD_HINT})")
    lib.aminet_cuda_device_count.argtypes = [ctypes.POINTER(_c_int)]
    lib.aminet_cuda_device_count.restype = _c_int
    lib.aminet_cuda_error_string.argtypes = [_c_int]
    lib.aminet_cuda_error_string.restype = ctypes.c_char_p
    lib.aminet_adaptive_mask.argtypes = [_c_ptr, _c_ptr, _c_int, _c_i64, _c_i64, _c_i64, _c_i64, ctypes.c_float,
                                         _c_ptr, _c_ptr, _c_ptr, _c_ptr]
    lib.aminet_adaptive_mask.restype = _c_int
    lib.aminet_smoothing_matrix.argtypes = [_c_i64, _c_i64, ctypes.c_double, _c_ptr]
    lib.aminet_smoothing_matrix.restype = _c_int
    lib.aminet_score_map_workspace_bytes.argtypes = [_c_i64, _c_i64, _c_i64, _c_i64, _c_i64]
    lib.aminet_score_map_workspace_bytes.restype = ctypes.c_size_t
    lib.aminet_score_map.argtypes = [_c_ptr, _c_ptr, _c_int, _c_i64, _c_i64, _c_i64, _c_i64, _c_ptr, _c_i64, _c_ptr,
                                     _c_i64, _c_int, _c_ptr, _c_i64, _c_i64, _c_ptr, _c_ptr, ctypes.c_float, _c_ptr,
                                     _c_ptr, _c_ptr, _c_ptr]
    lib.aminet_score_map.restype = _c_int
    lib.aminet_nearest_distance_workspace_bytes.argtypes = [_c_i64, _c_i64]
    lib.aminet_nearest_distance_workspace_bytes.restype = ctypes.c_size_t
    lib.aminet_nearest_distance.argtypes = [_c_ptr, _c_ptr, _c_int, _c_i64, _c_i64, _c_i64, _c_ptr, _c_ptr, _c_ptr,
                                            _c_ptr]
    lib.aminet_nearest_distance.restype = _c_int
    return lib


def library() -> ctypes.CDLL:
    """The loaded library; RuntimeError naming the build command when it is absent or unloadable."""
    path = library_path()
    if path is None:
        where = os.environ.get("AMINET_CUDA_LIB") or str(Path(__file__).resolve().parent.parent / LIB_NAME)
        raise RuntimeError(f"{LIB_NAME} not found at {where}: {_BUILD_HINT}")
    try:
        return _load(str(path))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc


def device_count() -> int:
    """Number of CUDA devices the library sees (0 without a driver or GPU)."""
    count = _c_int(0)
    library().aminet_cuda_device_count(ctypes.byref(count))
    return int(count.value)


def unavailable_reason() -> str | None:
    """None when the library loads and sees a GPU, else why not."""
    try:
        lib = library()
    except RuntimeError as exc:
        return str(exc)
    count = _c_int(0)
    err = lib.aminet_cuda_device_count(ctypes.byref(count))
    if err != 0 or count.value == 0:
        return f"{LIB_NAME} loaded but no CUDA GPU is usable ({_error_string(lib, err) if err else 'no device'})"
    return None


def _error_string(lib: ctypes.CDLL, err: int) -> str:
    return lib.aminet_cuda_error_string(err).decode(errors="replace")


def _check(lib: ctypes.CDLL, err: int, what: str) -> None:
    if err != 0:
        raise RuntimeError(f"{what} failed: CUDA error {err} ({_error_string(lib, err)})")


def adaptive_mask(tokens: int, centers: int, dtype: int, B: int, L: int, P: int, D: int, lam: float,
                  mask: int, min_dist: int, assign: int, stream: int = 0) -> None:
    """Launch adaptive_mask on `stream`.

    tokens (B, L, D), centers (B, P, D): device pointers of DTYPE_FLOAT32 / DTYPE_FLOAT16 data;
    outputs: mask (B, L) bool (1 byte), min_dist (B, L) float32, assign (B, L) int64.
    """
    lib = library()
    err = lib.aminet_adaptive_mask(tokens, centers, dtype, B, L, P, D, lam, mask, min_dist, assign, stream or None)
    _check(lib, err, "aminet_adaptive_mask")


@functools.lru_cache(maxsize=64)
def smoothing_matrix(in_size: int, out_size: int, sigma: float) -> np.ndarray:
    """Host (out_size, in_size) float32 A = blur(upsample(.)) as reference.smoothing_matrix; cached, read-only."""
    lib = library()
    out = np.empty((out_size, in_size), dtype=np.float32)
    err = lib.aminet_smoothing_matrix(in_size, out_size, float(sigma), out.ctypes.data)
    if err != 0:
        raise ValueError(f"smoothing_matrix sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    out.setflags(write=False)
    return out


def score_map_workspace_bytes(B: int, h: int, w: int, H: int, gw: int = 0) -> int:
    """Device workspace bytes `score_map` needs; gw: the token map's width (0 without one)."""
    return int(library().aminet_score_map_workspace_bytes(B, h, w, H, gw))


def score_map(feat: int, recon: int, dtype: int, B: int, C: int, h: int, w: int, a_h: int, H: int, a_w: int,
              W: int, image_score: int, amap: int, score: int, workspace: int, stream: int = 0, *,
              token_map: int = 0, gh: int = 0, gw: int = 0, a_hg: int = 0, a_wg: int = 0,
              token_weight: float = 0.0) -> None:
    """Launch score_map on `stream`.

    feat, recon (B, C, h, w) device pointers of `dtype`; a_h (H, h), a_w (W, w): device copies of
    `smoothing_matrix`; image_score SCORE_STD / SCORE_MAX; outputs amap (B, H, W), score (B,) float32;
    workspace: `score_map_workspace_bytes(B, h, w, H, gw)` bytes. token_map: 0 (no token term) or a
    (B, gh, gw) float32 device map, added as token_weight (finite, >= 0) * a_hg @ token_map @ a_wg^T with
    a_hg (H, gh), a_wg (W, gw) device copies of `smoothing_matrix`.
    """
    lib = library()
    err = lib.aminet_score_map(feat, recon, dtype, B, C, h, w, a_h, H, a_w, W, image_score, token_map or None, gh, gw,
                               a_hg or None, a_wg or None, token_weight, amap, score, workspace, stream or None)
    _check(lib, err, "aminet_score_map")


def nearest_distance_workspace_bytes(N: int, M: int) -> int:
    """Device workspace bytes `nearest_distance` needs for N queries against M bank rows (grows with N only)."""
    return int(library().aminet_nearest_distance_workspace_bytes(N, M))


def nearest_distance(queries: int, bank: int, dtype: int, N: int, M: int, C: int, out: int, workspace: int,
                     stream: int = 0, *, index: int = 0) -> None:
    """Launch nearest_distance on `stream`.

    queries (N, C) float32 and bank (M, C) of DTYPE_FLOAT32 / DTYPE_FLOAT16: device pointers; out (N,) float32
    distances to the nearest row; index: 0, or an (N,) int64 device buffer for the picked rows; workspace:
    `nearest_distance_workspace_bytes(N, M)` bytes.
    """
    lib = library()
    err = lib.aminet_nearest_distance(queries, bank, dtype, N, M, C, out, index or None, workspace, stream or None)
    _check(lib, err, "aminet_nearest_distance")
