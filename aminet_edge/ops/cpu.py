"""The C++ CPU backend ("cpp"): a thin numpy wrapper over the pybind11 module `aminet_edge._cpu_kernels`.

Torch-free (the edge runtime calls it with numpy arrays). Sources: csrc/cpu/{adaptive_mask,score_map,
nearest_distance,bindings}.cpp with the math shared with CUDA in csrc/include/aminet/. OpenMP threads:
OMP_NUM_THREADS.

Dtypes: float32 and float16 arrays go to the kernels as they are (fp16 is widened to float32 on load
inside C++, no copy); any other dtype (float64, ints) is converted to float32 here first, and a
non-contiguous array is made contiguous (both copy). All results are float32 / bool / int64.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

_BUILD_HINT = (
    "the C++ extension aminet_edge._cpu_kernels is not built: run `pip install -e . --no-build-isolation` "
    "or `python setup.py build_ext --inplace` (needs a C++17 compiler and pybind11; set AMINET_REQUIRE_EXT=1 "
    "to see the compiler error)"
)


@functools.lru_cache(maxsize=1)
def _module() -> Any:
    try:
        from aminet_edge import _cpu_kernels
    except ImportError as exc:
        raise RuntimeError(f"{_BUILD_HINT} ({exc})") from exc
    return _cpu_kernels


def unavailable_reason() -> str | None:
    """None when the extension imports, else why not (with the build command)."""
    try:
        _module()
    except RuntimeError as exc:
        return str(exc)
    return None


def num_threads() -> int:
    """OpenMP threads the kernels use."""
    return int(_module().num_threads())


def _as_input(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float16):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def adaptive_mask(tokens: Any, centers: Any, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """reference.adaptive_mask on the CPU.

    tokens: (B, L, D), centers: (B, P, D), float32 or float16 (same dtype); lam: boundary factor.
    Returns mask (B, L) bool, min_dist (B, L) float32, assign (B, L) int64.
    """
    t, c = _as_input(tokens), _as_input(centers)
    if t.dtype != c.dtype:
        t, c = t.astype(np.float32), c.astype(np.float32)
    return tuple(_module().adaptive_mask(t, c, float(lam)))  # type: ignore[return-value]


def nearest_distance(queries: Any, bank: Any, return_index: bool = False) -> Any:
    """reference.nearest_distance on the CPU, fused: one pass over the bank per block of queries.

    queries: (N, C) (converted to float32 here), bank: (M, C) float32 or float16, read as it is (a bank of
    another dtype, or a non-contiguous one, is converted here: an O(M * C) copy per call, so keep it
    float16/float32 and contiguous). Returns (N,) float32, and with return_index also the picked rows (N,)
    int64. The kernel allocates `nearest_workspace_bytes(N, M, C)`, independent of N * M.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = _module().nearest_distance(q, _as_input(bank), bool(return_index))
    return tuple(out) if return_index else out


def nearest_workspace_bytes(n: int, m: int, c: int) -> int:
    """Bytes `nearest_distance` allocates for N queries against an (M, C) bank on this machine's threads."""
    return int(_module().nearest_workspace_bytes(int(n), int(m), int(c), num_threads()))


@functools.lru_cache(maxsize=64)
def smoothing_matrix(in_size: int, out_size: int, sigma: float) -> np.ndarray:
    """(out_size, in_size) float32 A = blur(upsample(.)) as reference.smoothing_matrix; cached, read-only."""
    a = _module().smoothing_matrix(int(in_size), int(out_size), float(sigma))
    a.setflags(write=False)
    return a


def score_map(
    feat: Any,
    recon: Any,
    out_hw: tuple[int, int],
    sigma: float = 4.0,
    image_score: str = "std",
    token_map: Any = None,
    token_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """reference.score_map on the CPU.

    feat, recon: (B, C, h, w) float32 or float16; out_hw: (H, W) output pixels; sigma in output pixels;
    token_map: None or (B, gh, gw) (converted to float32), added as token_weight * its upsampled, smoothed
    map. Returns amap (B, H, W) float32 and score (B,) float32 (population std of the map, or its max).
    """
    f, r = _as_input(feat), _as_input(recon)
    if f.dtype != r.dtype:
        f, r = f.astype(np.float32), r.astype(np.float32)
    if f.ndim != 4:
        raise ValueError(f"feat must be (B, C, h, w), got shape {f.shape}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    a_h = smoothing_matrix(f.shape[2], out_h, float(sigma))
    a_w = smoothing_matrix(f.shape[3], out_w, float(sigma))
    if token_map is None:
        return tuple(_module().score_map(f, r, a_h, a_w, image_score))  # type: ignore[return-value]
    d = np.ascontiguousarray(token_map, dtype=np.float32)
    if d.ndim != 3:
        raise ValueError(f"token_map must be (B, gh, gw), got shape {d.shape}")
    a_hg = smoothing_matrix(d.shape[1], out_h, float(sigma))
    a_wg = smoothing_matrix(d.shape[2], out_w, float(sigma))
    out = _module().score_map(f, r, a_h, a_w, image_score, token_map=d, a_hg=a_hg, a_wg=a_wg,
                              token_weight=float(token_weight))
    return tuple(out)  # type: ignore[return-value]
