"""aminet-edge: AMI-Net anomaly detection from PyTorch training to edge inference.

Public API: `Detector` (torch-free runtime), `train`, `build_engine`. Importing this package does not
import torch; `train` and `build_engine` load it when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "train", "build_engine", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from aminet_edge.runtime.detector import Detector

        return Detector
    if name == "train":
        from aminet_edge.training.trainer import train

        return train
    if name == "build_engine":
        from aminet_edge.export.engine import build_engine

        return build_engine
    raise AttributeError(f"module 'aminet_edge' has no attribute {name!r}")
