"""Mixed precision for training: which dtype autocast uses on which device, and when gradients are scaled.

| --precision | CUDA sm80+ (A100, H100/H200, RTX 30/40, Jetson Orin sm87) | CUDA < sm80 (Turing, Volta) | CPU |
|---|---|---|---|
| auto | bf16 autocast | fp16 autocast + GradScaler | fp32 |
| bf16 | bf16 autocast | error (no bf16 tensor cores) | bf16 CPU autocast |
| fp16 | fp16 autocast + GradScaler | fp16 autocast + GradScaler | error (no scaler path worth having) |
| fp32 | fp32 | fp32 | fp32 |

Autocast runs matmuls and convolutions in the low dtype; weights, optimizer state and the losses'
distances and cosines stay float32 (`AMINet.losses` casts before them).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: first tensor cores with bfloat16


def resolve_precision(requested: str, device: torch.device,
                      capability: tuple[int, int] | None = None) -> str:
    """"bf16", "fp16" or "fp32" for `requested` (one of PRECISIONS) on `device` (table above).

    capability: the GPU's (major, minor) compute capability; None reads it from torch (CUDA only).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device.type != "cuda":
        if requested == "fp16":
            raise ValueError("fp16 training needs a CUDA GPU; on the CPU use --precision bf16 or fp32")
        return "fp32" if requested == "auto" else requested
    cap = capability if capability is not None else torch.cuda.get_device_capability(device)
    has_bf16 = tuple(cap) >= BF16_MIN_CAPABILITY
    if requested == "auto":
        return "bf16" if has_bf16 else "fp16"
    if requested == "bf16" and not has_bf16:
        raise ValueError(f"GPU {device} is sm{cap[0]}{cap[1]}: bf16 needs sm80 or newer; "
                         f"use --precision fp16 (with gradient scaling) or fp32")
    return requested


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context for a resolved precision (a disabled one for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its 5-bit exponent underflows small gradients); a no-op scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
