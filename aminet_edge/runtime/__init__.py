"""The edge runtime: `Detector` and its backends. Needs numpy, Pillow and the chosen backend only (no torch).

Public names: Detector, Result, Thresholds, Timing, InputError, Limits, BackendUnavailableError,
EngineError, BundleError, available_backends, sensitivity_factor.
"""

from __future__ import annotations

from aminet_edge.bundle import BundleError
from aminet_edge.runtime.backends import BackendUnavailableError, EngineError, available_backends
from aminet_edge.runtime.detector import Detector, sensitivity_factor
from aminet_edge.runtime.inputs import InputError, Limits
from aminet_edge.runtime.result import Result, Thresholds, Timing

__all__ = ["Detector", "Result", "Thresholds", "Timing", "InputError", "Limits", "BackendUnavailableError",
           "EngineError", "BundleError", "available_backends", "sensitivity_factor"]
