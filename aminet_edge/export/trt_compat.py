"""The differences between the `tensorrt` (TRT 10.x: JetPack 6, datacenter) and `tensorrt_rtx` Python APIs.

Everything version-dependent the engine builder needs sits here, chosen by what the module has rather
than by version numbers. Both modules are imported lazily; this file imports neither at load time.

Typing: the functions both flavours share take the standard `tensorrt` classes as annotations, so
mypy checks their calls against tensorrt-stubs (tests/test_engine.py); the module object itself and
the TensorRT-RTX-only calls are `Any` (tensorrt_rtx ships no stubs).
"""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorrt as trt_types

BACKENDS = ("tensorrt_rtx", "tensorrt")
INSTALL_HINT = {
    "tensorrt_rtx": "pip install tensorrt-rtx (or aminet-edge[rtx])",
    "tensorrt": "JetPack 6.1+ on Jetson (TensorRT 10.x ships with it); elsewhere pip install tensorrt",
}
# TensorRT-RTX ComputeCapability members by SM number; Turing (75) is listed by the API but not offered
RTX_SM = {80: "SM80", 86: "SM86", 89: "SM89", 120: "SM120", 121: "SM121"}
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


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


def is_rtx(trt: Any) -> bool:
    """True for the TensorRT-RTX module (it has per-config compute capabilities, no FP16 flag)."""
    return hasattr(trt, "ComputeCapability")


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T writes /etc/nv_tegra_release)."""
    return TEGRA_RELEASE.exists()


def supports_strong_typing(trt: Any) -> bool:
    """TensorRT-RTX and TensorRT >= 9 have strongly typed networks; 8.6 (JetPack 6.0) does not."""
    return is_rtx(trt) or "STRONGLY_TYPED" in trt.NetworkDefinitionCreationFlag.__members__


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """Creation flags: EXPLICIT_BATCH only where the enum still has it (TRT 8 needs it, 10 ignores it,
    RTX lacks it); STRONGLY_TYPED when asked (TRT-RTX networks are strongly typed either way)."""
    names = trt.NetworkDefinitionCreationFlag.__members__
    flags = 0
    if "EXPLICIT_BATCH" in names:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed and "STRONGLY_TYPED" in names:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def set_precision(trt: Any, config: trt_types.IBuilderConfig, precision: str, strongly_typed: bool) -> None:
    """Precision flags.

    Strongly typed networks (all of TensorRT-RTX; TensorRT 10 here) take their precision from the graph's
    own casts, so no FP16 flag: setting it is an error there. A weakly typed network (TensorRT 8.6 only)
    gets BuilderFlag.FP16 for an fp16 build, which lets TensorRT choose fp16 for any layer.
    fp32 builds clear TF32 (on by default), so "fp32" means float32 matrix products.
    """
    if precision == "fp16" and not strongly_typed and not is_rtx(trt):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and "TF32" in trt.BuilderFlag.__members__:
        config.clear_flag(trt.BuilderFlag.TF32)


def set_workspace(trt: Any, config: trt_types.IBuilderConfig, workspace: int | None) -> None:
    """Workspace limit in bytes through the memory-pool API (max_workspace_size is gone in TRT 10)."""
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))


def set_compute_capabilities(trt: Any, config: Any, sms: list[int]) -> None:
    """TensorRT-RTX only: ahead-of-time targets (no GPU needed). Standard TensorRT builds for the GPU present."""
    config.num_compute_capabilities = len(sms)
    for i, sm in enumerate(sms):
        config.set_compute_capability(getattr(trt.ComputeCapability, RTX_SM[sm]), i)


def set_hardware_compatibility(trt: Any, config: trt_types.IBuilderConfig, ampere_plus: bool) -> None:
    """Standard TRT on a dGPU: AMPERE_PLUS engines run on any Ampere or newer GPU (not on Jetson)."""
    if ampere_plus:
        if not hasattr(trt, "HardwareCompatibilityLevel"):
            raise ValueError(f"{trt.__name__} {trt.__version__} has no hardware compatibility levels")
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


def parser_errors(parser: trt_types.OnnxParser) -> list[str]:
    """'node <name> (<op>): <description>' per parser error (TensorRT 8.6 has no node name/op: '#<index>')."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
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
