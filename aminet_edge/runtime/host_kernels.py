"""The Detector's host-side image steps on the C++ kernels where they are built, else numpy / Pillow.

Both give the same bits: `preprocess` is aminet_edge.data.images.preprocess (Pillow's BILINEAR on mode
"F" per channel, then (x - mean) / std) and the kernels' `resize_map` is aminet_edge.data.images.resize_map's
numpy arithmetic, both from csrc/runtime/preprocess.cpp (the C runtime's, compiled without fused
multiply-add). Single-threaded (threads here competed with the inference runtime's right after its
call), without Pillow's per-channel copies and numpy's temporaries: at 512x512 -> 256x256 1.6 ms vs
2.2 ms for preprocess and 0.21 ms vs 1.42 ms for a 256 -> 512 map (fastest of 30 calls on a 2-core EPYC;
bench/stages.py, bench/results/stages.md). An extension built before these kernels existed falls back silently. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def kernels() -> Any | None:
    """aminet_edge._cpu_kernels when it is built and has the host kernels, else None."""
    try:
        from aminet_edge import _cpu_kernels
    except ImportError:
        return None
    return _cpu_kernels if hasattr(_cpu_kernels, "preprocess_rgb") else None


def preprocess(rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] -> (3, size, size) float32 C-contiguous model input, bit-identical
    to aminet_edge.data.images.preprocess."""
    k = kernels()
    if k is None:
        from aminet_edge.data.images import preprocess as pil_preprocess

        return np.ascontiguousarray(pil_preprocess(rgb, size, mean, std), dtype=np.float32)
    return k.preprocess_rgb(np.ascontiguousarray(rgb, dtype=np.float32), int(size),
                            [float(m) for m in mean], [float(s) for s in std])
