"""What `aminet-edge info` prints: versions, op backends, inference runtimes, GPU."""

from __future__ import annotations

import importlib
import platform
from typing import Any


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not available ({type(exc).__name__}: {exc})".splitlines()[0][:120]
    if getattr(mod, "__file__", None) is None:  # an empty namespace folder, e.g. left by tensorrt-stubs
        return "not available (empty namespace package, no library)"
    return str(getattr(mod, "__version__", "installed"))


def collect_info() -> dict[str, Any]:
    """A dict of sections; values are strings or dicts of strings."""
    from aminet_edge import __version__
    from aminet_edge.ops import available_backends

    info: dict[str, Any] = {
        "aminet-edge": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": {m: _version(m) for m in ("numpy", "torch", "triton", "onnx", "onnxruntime",
                                              "tensorrt", "tensorrt_rtx", "pycuda")},
        "op backends": available_backends(),
    }
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        gpu = "unknown (torch not installed)"
    info["gpu"] = gpu
    return info
