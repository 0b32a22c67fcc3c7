"""Serving many cameras on NVIDIA Triton Inference Server (torch-free).

- `write_repository(run, out, target="cpu" | "gpu")`: a Triton model repository from a bundle;
- `TritonServer(repository)`: run tritonserver on it (the binary from the PyPI wheel nvidia-pytriton,
  or NVIDIA's container), wait until ready, stop;
- `RemoteDetector(url)`: `Detector`'s predict API and Results against the served model.
Wire contract: aminet_edge.serving.protocol. Guide: docs/serving.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"RemoteDetector": "client", "ServerBusyError": "client", "RequestTimeoutError": "client",
         "ServerUnavailableError": "client", "RemoteError": "client", "write_repository": "repository",
         "check_repository": "repository", "QueuePolicy": "repository", "TritonServer": "server",
         "ServerError": "server", "find_tritonserver": "server"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"aminet_edge.serving.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
