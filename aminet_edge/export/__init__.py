"""Export: bundle -> ONNX graphs (onnx_export) -> TensorRT / TensorRT-RTX engines (engine).

Importing this package is light (no torch, onnx or tensorrt): the torch-free runtime calls
`aminet_edge.export.engine.check_engine`. The public functions load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"export_onnx": "onnx_export", "build_engine": "engine", "check_engine": "engine",
         "serialize_onnx": "engine", "check_graph": "graph_checks", "GraphCheckError": "graph_checks"}

__all__ = [*_LAZY, "PRECISIONS", "onnx_name"]
PRECISIONS = ("fp32", "fp16", "int8")  # of the exported graphs; int8 runs on onnxruntime only


def onnx_name(part: str, precision: str) -> str:
    """File name of graph `part` ("model", "model_a", "model_b") at `precision` ("fp32", "fp16", "int8")."""
    return f"{part}.onnx" if precision == "fp32" else f"{part}_{precision}.onnx"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"aminet_edge.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
