"""The Triton backend ("triton"): kernels for torch CUDA tensors (the PyTorch GPU path).

One module per op (adaptive_mask.py, score_map.py), each exposing the op under its own name with the
reference's signature, tested against it. Import the submodule: this package defines no op names, so
none is shadowed by a submodule. Triton is imported only with a kernel module.

With TRITON_INTERPRET=1 the kernels also run on CPU tensors in Triton's interpreter (how CI tests them;
slow). Triton reads the variable when it decorates functions, its own library (tl.sum, ...) included, so
it must be set before triton is first imported in the process: the tests use a subprocess.
"""

from __future__ import annotations

import importlib.util
import os

INSTALL_HINT = "triton is not installed: pip install 'aminet-edge[gpu]' (or pip install triton)"


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(device_type: str = "cuda") -> str | None:
    """None when the Triton kernels can run on tensors of `device_type` ("cuda" or "cpu"), else why not."""
    if importlib.util.find_spec("triton") is None:
        return INSTALL_HINT
    if importlib.util.find_spec("torch") is None:
        return "the Triton kernels run on torch tensors: torch is not installed"
    if device_type == "cpu":
        return None if interpret_mode() else "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1)"
    if device_type != "cuda":
        return f"Triton kernels need CUDA tensors, got device {device_type!r}"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None

