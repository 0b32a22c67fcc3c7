"""Export: bundle -> ONNX graphs (onnx_export) -> TensorRT / TensorRT-RTX engines (engine).

Importing this package is light (no torch, onnx or tensorrt): the torch-free runtime calls
`aminet_edge.export.engine.check_compatible`. The public functions load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from aminet_edge.bundle import PRECISIONS, onnx_name  # the bundle's layout, re-exported for export's callers

_LAZY = {"export_onnx": "onnx_export", "build_engine": "engine", "check_engine": "engine",
         "serialize_onnx": "engine", "check_graph": "graph_checks", "GraphCheckError": "graph_checks"}

__all__ = [*_LAZY, "PRECISIONS", "onnx_name"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"aminet_edge.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
