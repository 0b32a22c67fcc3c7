"""torch backend: the bundle's `Pipeline` (aminet_edge.model.pipeline) in eager PyTorch, CPU or CUDA.

The two fused ops go through the aminet_edge.ops dispatcher (`ops_backend="auto"`: Triton on CUDA, the
C++ kernels on CPU, the PyTorch reference where neither exists); `ops_backend="reference"` runs the pure
PyTorch reference, as training does. Needs the `train` extra (torch, safetensors); imported only when
this backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig
from aminet_edge.runtime.backends import Backend, BackendOutput, BackendUnavailableError


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode."""

    name = "torch"

    def __init__(self, bundle: Path, config: BundleConfig, device: str = "cpu", ops_backend: str = "auto",
                 threads: int | None = None) -> None:
        try:
            import torch

            from aminet_edge.model.pipeline import load_pipeline
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs torch and safetensors (pip install 'aminet-edge[train]'): {exc}") from exc
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("device='cuda' but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module thread count
        self.torch = torch
        self.device = device
        self.ops_backend = ops_backend
        pipeline, _ = load_pipeline(bundle, ops_backend=ops_backend)
        self.pipeline: Any = pipeline.to(device).eval()

    def run(self, images: np.ndarray) -> BackendOutput:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device, non_blocking=False)
            amap, score, mask = self.pipeline(x)
            return BackendOutput(amap.float().cpu().numpy(), score.float().cpu().numpy(),
                                 mask.bool().cpu().numpy())

    def close(self) -> None:
        self.pipeline = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def describe(self) -> str:
        return f"torch {self.torch.__version__} {self.device} (ops: {self.ops_backend})"


def create(name: str, bundle: Path, config: BundleConfig, device: str = "cpu", ops_backend: str = "auto",
           threads: int | None = None, **options: Any) -> Backend:
    """Registry entry point (see aminet_edge.runtime.backends)."""
    if options:
        raise TypeError(f"backend {name!r} got unknown option(s) {', '.join(sorted(options))}")
    return TorchBackend(bundle, config, device, ops_backend, threads)
