"""The differences between the `tensorrt` (TRT 10.x: JetPack 6, datacenter) and `tensorrt_rtx` Python APIs.

Everything version-dependent the engine builder needs sits here, chosen by what the module has rather
than by version numbers. Both modules are imported lazily; this file imports neither at load time.
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any

BACKENDS = ("tensorrt_rtx", "tensorrt")
INSTALL_HINT = {
    "tensorrt_rtx": "pip install tensorrt-rtx (or aminet-edge[rtx])",
    "tensorrt": "JetPack 6 on Jetson (TensorRT 10.x ships with it); elsewhere pip install tensorrt",
}
# TensorRT-RTX ComputeCapability members by SM number; Turing (75) is listed by the API but not offered
RTX_SM = {80: "SM80", 86: "SM86", 89: "SM89", 120: "SM120", 121: "SM121"}


class BackendNotInstalledError(ImportError):
    """The TensorRT flavour asked for is not importable; the message names what to install."""


def load_backend(name: str) -> Any:
    """The `tensorrt_rtx` or `tensorrt` module, or BackendNotInstalledError.

    An empty `tensorrt` namespace package (left by the stubs or a partial install) counts as absent.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown TensorRT backend {name!r}; known: {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise BackendNotInstalledError(f"{name} is not installed: {INSTALL_HINT[name]}") from exc
    if not hasattr(module, "Builder") or not hasattr(module, "__version__"):
        raise BackendNotInstalledError(f"{name} is importable but has no Builder (an empty namespace "
                                       f"package or incomplete install): {INSTALL_HINT[name]}")
    return module


def is_installed(name: str) -> bool:
    """True when `load_backend(name)` would succeed."""
    try:
        load_backend(name)
    except BackendNotInstalledError:
        return False
    return True


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """Creation flags: EXPLICIT_BATCH only where the enum still has it (TRT < 10 needs it; 10 ignores
    it; RTX lacks it), STRONGLY_TYPED when asked (TRT-RTX networks are always strongly typed)."""
    names = trt.NetworkDefinitionCreationFlag.__members__
    flags = 0
    if "EXPLICIT_BATCH" in names:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed or is_rtx(trt):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def is_rtx(trt: Any) -> bool:
    """True for the TensorRT-RTX module (it has per-config compute capabilities, no FP16 flag)."""
    return hasattr(trt, "ComputeCapability")


def set_precision(trt: Any, config: Any, precision: str, strongly_typed: bool) -> None:
    """FP16 builder flag only for a weakly typed standard-TensorRT network; strongly typed networks
    (and all of TensorRT-RTX) take their precision from the graph's own casts."""
    if precision == "fp16" and not strongly_typed and not is_rtx(trt):
        config.set_flag(trt.BuilderFlag.FP16)


def set_workspace(trt: Any, config: Any, workspace_mb: int | None) -> None:
    """Workspace limit through the memory-pool API (the old max_workspace_size is gone in TRT 10)."""
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)


def set_compute_capabilities(trt: Any, config: Any, sms: list[int]) -> None:
    """TensorRT-RTX ahead-of-time targets (no GPU needed). Standard TensorRT builds for the GPU present."""
    config.num_compute_capabilities = len(sms)
    for i, sm in enumerate(sms):
        config.set_compute_capability(getattr(trt.ComputeCapability, RTX_SM[sm]), i)


def set_hardware_compatibility(trt: Any, config: Any, ampere_plus: bool) -> None:
    """Standard TRT on a dGPU: AMPERE_PLUS engines run on any Ampere or newer GPU (not on Jetson)."""
    if ampere_plus and hasattr(trt, "HardwareCompatibilityLevel"):
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS


def make_logger(trt: Any) -> Any:
    """A logger that keeps the builder's warnings and errors (OOM and parser messages are read from it)."""

    class Recorder(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(str(msg))

    return Recorder()


def parser_errors(parser: Any) -> list[str]:
    """'node <name> (<op>): <description>' per parser error (node name/op where the API has them)."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = err.node_name() if hasattr(err, "node_name") else f"#{err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else "?"
        out.append(f"node {name or '#' + str(err.node())} ({op or '?'}): {err.desc()}")
    return out


def gpus() -> list[tuple[str, int]]:
    """(name, compute capability as major*10+minor) of each CUDA GPU via the driver API; [] without one."""
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return []
    count = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    found = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        cuda.cuDeviceGetName(name, 256, dev)
        found.append((name.value.decode(), major.value * 10 + minor.value))
    return found

