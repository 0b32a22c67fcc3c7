"""Inference backends of the Detector: one registry of names, availability and the `auto` order.

A backend turns preprocessed images (B, 3, S, S) float32 into the model's three outputs
(`BackendOutput`); one with `takes_frames` (torch on CUDA) takes the decoded RGB frames instead and
preprocesses them on its device (`run_frames`). Each lives in its own module and imports its heavy package (torch, onnxruntime,
tensorrt/tensorrt_rtx, pycuda/cuda-python) only when it is created; `backend_status` answers "can it
run here, and if not why" without running anything (and, for CPU, without importing torch).

| name              | device    | needs                                                            |
|-------------------|-----------|------------------------------------------------------------------|
| openvino          | cpu       | openvino, model.onnx (fp32 graph; bf16 only when asked);         |
|                   |           | precision="int8": model_int8_static.onnx (never the default)     |
| openvino-split    | cpu       | openvino, model_a.onnx + model_b.onnx, C++ kernels (built ext)    |
| onnxruntime-split | cpu       | onnxruntime, model_a.onnx + model_b.onnx, C++ kernels (built ext) |
| onnxruntime       | cpu, cuda | onnxruntime (CUDAExecutionProvider for cuda), model.onnx         |
| torch             | cpu, cuda | torch + safetensors (the `train` extra)                          |
| tensorrt          | cuda      | tensorrt (Jetson/datacenter) or tensorrt_rtx (RTX), pycuda or     |
|                   |           | cuda-python, an engine for this GPU in bundle/engines            |

`auto_order(device, config)` is a table, fastest first as measured by bench/runtime.py on the machines
BENCHMARKS.md names; on CPU it depends on the CPU's bf16 / VNNI instructions and the feature width, and
`auto_reason` says why. On CPU, `Detector.load(backend="auto")` does not trust it: it times the accurate
candidates on the machine it runs on and keeps the fastest in the bundle's cache (`auto`, the sibling module);
the table gives the order they are timed in, and the choice itself where AMINET_AUTO=table or on CUDA.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError, graph_file, read_config

BACKENDS = ("openvino", "openvino-split", "onnxruntime-split", "onnxruntime", "torch", "tensorrt")
DEVICES = ("cpu", "cuda")

# fastest first on CUDA: TensorRT's fused engine, then eager torch (Triton ops), then onnxruntime's CUDA EP
# (not measured: no GPU in this project's CI). CPU: see auto_order.
CUDA_ORDER = ("tensorrt", "torch", "onnxruntime")
# On CPU the split graphs win when the feature maps are wide: the reference score map and mask nodes of
# the single graph grow with the channel count C, the C++ kernels barely do. Measured on a quiet 2-core
# x86 (Xeon, AVX-512), backend ms per image at batch 1, each backend alone in its process:
#   "paper" preset (WideResNet50, C = 1792): split 480 vs single 612 -> split first;
#   "cpu" preset (EfficientNet-Lite0, C = 176): single 40-42 vs split 45-48 -> single first
#   (two sessions cost more than the small reference ops they replace).
SPLIT_MIN_CHANNELS = 512
# OpenVINO vs onnxruntime on CPU is decided by the CPU's instructions (cpu-preset bundle, same graphs):
#   native bf16 (AVX512_BF16 / AMX): OpenVINO's bf16 16.0 ms/img vs onnxruntime int8 24-25 at batch 1
#     (Xeon with AMX); bf16 is opt-in (it moves the maps, BENCHMARKS.md "OpenVINO on CPU: precision and accuracy"),
#     and OpenVINO fp32 is 38 ms/img at batch 8 vs onnxruntime int8 40 (AMD EPYC with AVX512_BF16) -> openvino first;
#   int8 dot products (AVX512_VNNI / AVX_VNNI) without bf16: onnxruntime's int8 graph runs on VNNI, OpenVINO
#     only fp32 (45 ms/img fp32 vs 24-25 int8 on that Xeon) -> onnxruntime first;
#   neither (AVX2, e.g. AMD EPYC Zen 3, this project's machine): OpenVINO fp32 0.98-1.3x onnxruntime int8
#     end to end, never clearly slower (bench/runtime.py, BENCHMARKS.md; heavily shared cores) -> openvino first.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); on other systems only "avx512_bf16" when
    OpenVINO reports BF16, else empty."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    if has_module("openvino"):
        from aminet_edge.runtime.backends.openvino_backend import cpu_capabilities

        return frozenset(["avx512_bf16"] if "BF16" in cpu_capabilities() else [])
    return frozenset()


def cpu_kind() -> str:
    """"bf16", "vnni" or "plain": which instructions decide the CPU order (see BF16_FLAGS, VNNI_FLAGS)."""
    flags = cpu_flags()
    if any(f in flags for f in BF16_FLAGS):
        return "bf16"
    return "vnni" if any(f in flags for f in VNNI_FLAGS) else "plain"


def auto_order(device: str, config: BundleConfig | None = None) -> tuple[str, ...]:
    """The backends `auto` tries on `device` for this bundle, fastest first."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose 'cpu' or 'cuda'")
    if device != "cpu":
        return CUDA_ORDER
    wide = config is None or config.in_channels >= SPLIT_MIN_CHANNELS
    ort = ("onnxruntime-split", "onnxruntime") if wide else ("onnxruntime", "onnxruntime-split")
    ov = ("openvino-split", "openvino") if wide else ("openvino", "openvino-split")
    return (*ort, *ov, "torch") if cpu_kind() == "vnni" else (*ov, *ort, "torch")


def auto_reason(device: str, config: BundleConfig | None = None) -> str:
    """Why auto_order(device, config) is in that order, one line."""
    if device != "cpu":
        return "TensorRT's fused engine first, then eager torch, then onnxruntime"
    width = ("wide features (>= %d channels): split graphs + C++ kernels first" % SPLIT_MIN_CHANNELS
             if config is None or config.in_channels >= SPLIT_MIN_CHANNELS else "narrow features: single graph first")
    engine = {"bf16": "this CPU has native bf16: OpenVINO first (fp32; bf16 when asked)",
              "vnni": "this CPU has VNNI but no bf16: onnxruntime's int8 graph first",
              "plain": "this CPU has neither bf16 nor VNNI: OpenVINO fp32 first"}[cpu_kind()]
    return f"{engine}; {width}"


MODULES = {
    "torch": "aminet_edge.runtime.backends.torch_backend",
    "onnxruntime": "aminet_edge.runtime.backends.onnxruntime_backend",
    "onnxruntime-split": "aminet_edge.runtime.backends.onnxruntime_backend",
    "openvino": "aminet_edge.runtime.backends.openvino_backend",
    "openvino-split": "aminet_edge.runtime.backends.openvino_backend",
    "tensorrt": "aminet_edge.runtime.backends.tensorrt_backend",
}

class BackendUnavailableError(ImportError):
    """A backend cannot run here: a package is missing (the message names the pip extra) or no GPU."""


class EngineError(BundleError):
    """A TensorRT engine is missing from the bundle, or was built for another GPU / TensorRT version."""


@dataclass(frozen=True)
class BackendOutput:
    """One batch's model outputs: amap (B, S, S) float32, score (B,) float32, mask (B, L) bool."""

    amap: np.ndarray
    score: np.ndarray
    mask: np.ndarray


class Backend(ABC):
    """An inference session over one bundle.

    `run` is not required to be thread-safe: the Detector serialises calls to it. `max_batch` is the
    largest batch `run` accepts (None = any); with `exact_batch` it accepts only that size (the
    Detector pads).
    """

    name: str = ""
    device: str = "cpu"
    precision: str = "fp32"  # of the graph or engine that runs ("fp32", "fp16", "int8", "bf16" mixed)
    max_batch: int | None = None
    exact_batch: bool = False

    takes_frames: bool = False  # True: the Detector passes raw frames to `run_frames` instead of `run`

    @abstractmethod
    def run(self, images: np.ndarray) -> BackendOutput:
        """images: (B, 3, S, S) float32, C-contiguous, normalised as the bundle's preprocess says."""

    def run_frames(self, frames: list[np.ndarray]) -> BackendOutput:
        """frames: B RGB images (H_i, W_i, 3), uint8 (0..255) or float32 in [0, 1] (runtime.inputs.to_frame);
        the backend resizes and normalises them itself (on its device). Only called when `takes_frames`."""
        raise NotImplementedError(f"backend {self.name!r} takes preprocessed images (run), not frames")

    def close(self) -> None:
        """Release sessions and device memory (idempotent)."""

    def describe(self) -> str:
        """One line for logs: name, device and what runs underneath."""
        return f"{self.name} on {self.device}"


def has_module(name: str) -> bool:
    """Whether `name` is importable, without importing it (a parent package may be imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _cpp_kernels_available() -> bool:
    return has_module("aminet_edge._cpu_kernels")


def check_backend(name: str, bundle: str | Path | None = None, config: BundleConfig | None = None,
                  device: str = "cpu") -> Exception | None:
    """None if backend `name` can run on `device` (for `bundle`, when given); else the error saying why.

    The error is a BackendUnavailableError (package or GPU missing), a BundleError (graph not exported,
    not recorded, or the bundle predates checksums) or an EngineError (no engine for this GPU). Cheap:
    checksums are verified when the backend is created, not here. Never imports torch for device "cpu";
    for "cuda" the torch backend imports torch to ask for a GPU.
    """
    if name not in BACKENDS:
        return ValueError(f"unknown backend {name!r}; choose 'auto' or one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        return ValueError(f"unknown device {device!r}; choose 'cpu' or 'cuda'")
    missing_pkg = BackendUnavailableError
    if name in ("openvino", "openvino-split"):
        if device != "cpu":
            return missing_pkg("the openvino backends run on the CPU only (on cuda use tensorrt, torch or onnxruntime)")
        if not has_module("openvino"):
            return missing_pkg("openvino is not installed (pip install 'aminet-edge[openvino]')")
        if name == "openvino-split" and not _cpp_kernels_available():
            return missing_pkg("the C++ kernels (aminet_edge._cpu_kernels) are not built; reinstall "
                               "aminet-edge with a C++ compiler and pybind11 present")
        return _graphs_problem(bundle, config, ("model_a", "model_b") if name == "openvino-split" else ("model",))
    if name in ("onnxruntime", "onnxruntime-split"):
        if not has_module("onnxruntime"):
            return missing_pkg("onnxruntime is not installed (pip install 'aminet-edge[onnxruntime]')")
        if name == "onnxruntime-split":
            if device != "cpu":
                return missing_pkg("the split-graph onnxruntime backend runs on the CPU only "
                                   "(on cuda use tensorrt, torch or onnxruntime)")
            if not _cpp_kernels_available():
                return missing_pkg("the C++ kernels (aminet_edge._cpu_kernels) are not built; reinstall "
                                   "aminet-edge with a C++ compiler and pybind11 present")
            parts: tuple[str, ...] = ("model_a", "model_b")
        else:
            if device == "cuda":
                import onnxruntime as ort

                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    return missing_pkg("this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
            parts = ("model",)
        return _graphs_problem(bundle, config, parts)
    if name == "torch":
        if not (has_module("torch") and has_module("safetensors")):
            return missing_pkg("torch and safetensors are not installed (pip install 'aminet-edge[train]')")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return missing_pkg("torch sees no CUDA device")
        return None
    # tensorrt
    if device != "cuda":
        return missing_pkg("TensorRT runs on a CUDA GPU only (device='cuda')")
    from aminet_edge.runtime.backends.tensorrt_backend import installed_flavours

    if not installed_flavours():
        return missing_pkg("neither tensorrt nor tensorrt_rtx is installed (Jetson/datacenter: NVIDIA's "
                           "tensorrt; RTX PCs: pip install 'aminet-edge[rtx]')")
    if not (has_module("pycuda") or has_module("cuda.bindings") or has_module("cuda.cudart")):
        return missing_pkg("neither pycuda nor cuda-python is installed (pip install 'aminet-edge[jetson]' "
                           "for pycuda, or pip install cuda-python)")
    if bundle is not None:
        from aminet_edge.runtime.backends.tensorrt_backend import find_engine

        try:
            find_engine(bundle, config)
        except (EngineError, BackendUnavailableError) as exc:
            return exc
    return None


def _graphs_problem(bundle: Path | None, config: BundleConfig | None, parts: tuple[str, ...]) -> BundleError | None:
    """The BundleError of the first of graphs `parts` that is not recorded or not present (checksums are
    verified at load, not here); None when all are, or when no bundle is given."""
    if bundle is None:
        return None
    try:
        config = config if config is not None else read_config(bundle)
        for part in parts:
            graph_file(bundle, config, part, verify=False)
    except BundleError as exc:
        return exc
    return None


def backend_status(name: str, bundle: str | Path | None = None, config: BundleConfig | None = None,
                   device: str = "cpu") -> str | None:
    """None if backend `name` can run on `device` (for `bundle`, when given); else the reason, one line."""
    error = check_backend(name, bundle, config, device)
    return None if error is None else str(error)


def available_backends(bundle: str | Path | None = None, config: BundleConfig | None = None,
                       device: str | None = None) -> dict[str, str]:
    """{"<backend>@<device>": "available" or the reason not} for every backend and device (or one device)."""
    out = {}
    for dev in (device,) if device else DEVICES:
        for name in BACKENDS:
            try:
                reason = backend_status(name, bundle, config, dev)
            except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
                reason = f"{type(exc).__name__}: {exc}"
            out[f"{name}@{dev}"] = "available" if reason is None else reason
    return out


def select_backend(bundle: str | Path, config: BundleConfig, device: str) -> tuple[str, dict[str, str]]:
    """The first usable backend of auto_order(device, config) and the reasons earlier ones were skipped."""
    skipped: dict[str, str] = {}
    for name in auto_order(device, config):
        reason = backend_status(name, bundle, config, device)
        if reason is None:
            return name, skipped
        skipped[name] = reason
    lines = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    raise BackendUnavailableError(f"no backend can run {bundle} on {device}: {lines}")


def create_backend(name: str, bundle: str | Path, config: BundleConfig, device: str = "cpu",
                   **options: Any) -> Backend:
    """Instantiate backend `name` for the bundle; raises check_backend's error when it cannot run."""
    error = check_backend(name, bundle, config, device)
    if error is not None:
        raise error
    module = importlib.import_module(MODULES[name])
    return module.create(name, Path(bundle), config, device, **options)  # type: ignore[no-any-return]
