"""torch backend: the bundle's `Pipeline` (aminet_edge.model.pipeline) in PyTorch, CPU or CUDA.

The two fused ops go through the aminet_edge.ops dispatcher (`ops_backend="auto"`: Triton on CUDA, the
C++ kernels on CPU, the PyTorch reference where neither exists); `ops_backend="reference"` runs the pure
PyTorch reference, as training does. Needs the `train` extra (torch, safetensors); imported only when
this backend is chosen.

Data path on CUDA (`device="cuda"`), one batch:
1. frames (`takes_frames`, default on CUDA): each decoded RGB frame goes to the device once, uint8 when
   it was 8-bit (frames of one size and dtype in one copy); on the device it is scaled to [0, 1], resized
   to S x S (bilinear, antialiased: PIL's filter, which the host path uses, to ~1e-7) and normalised;
2. backbone + AMI-Net in `precision` ("fp32"; "fp16" / "bf16" under autocast), the fused ops (and the
   nearest-normal guide, when the bundle's mask is that) in float32;
3. amap, score and mask packed into one (B, S*S + 1 + L) float32 tensor: one copy back to the host.
With `cuda_graph=True`, step 2-3 is one CUDA graph per batch size, captured on its first use with a
static input buffer (`_Captured`); a later batch of that size copies into the buffer and replays.
Each graph keeps its own memory pool (pools are not shared, so replays in any order are safe): device
memory grows with the number of distinct batch sizes; keep the Detector's batch size fixed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from aminet_edge.bundle import BundleConfig
from aminet_edge.runtime.backends import Backend, BackendOutput, BackendUnavailableError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class _Captured:
    """One batch size's graph: copy images into `static_in` (B, 3, S, S), `replay()`, read `static_out`."""

    static_in: Any
    static_out: Any
    replay: Callable[[], None]


class TorchBackend(Backend):
    """PyTorch under inference_mode; optional device preprocessing, autocast and CUDA graphs."""

    name = "torch"

    def __init__(self, bundle: Path, config: BundleConfig, device: str = "cpu", ops_backend: str = "auto",
                 threads: int | None = None, precision: str = "fp32", cuda_graph: bool = False,
                 device_preprocess: bool | None = None, device_index: int = 0) -> None:
        try:
            import torch

            from aminet_edge.model.pipeline import load_pipeline
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the torch backend needs torch and safetensors (pip install 'aminet-edge[train]'): {exc}") from exc
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} for the torch backend, "
                             f"got {precision!r}")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailableError("device='cuda' but torch sees no CUDA device")
            if not 0 <= device_index < torch.cuda.device_count():
                raise ValueError(f"device_index {device_index}: torch sees {torch.cuda.device_count()} CUDA device(s)")
            self.dev = torch.device("cuda", device_index)
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                raise ValueError(f"precision='bf16' needs an SM 80+ GPU; {torch.cuda.get_device_name(self.dev)} "
                                 f"has none: use precision='fp16'")
        elif device == "cpu":
            self.dev = torch.device("cpu")
            if cuda_graph:
                raise ValueError("cuda_graph=True needs device='cuda'")
        else:
            raise ValueError(f"unknown device {device!r}; choose 'cpu' or 'cuda'")
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-module thread count
        self.torch = torch
        self.device = device
        self.ops_backend = ops_backend
        self.precision = precision
        self.cuda_graph = bool(cuda_graph)
        self.takes_frames = device == "cuda" if device_preprocess is None else bool(device_preprocess)
        self.size = config.model.image_size
        self.mask = config.model.mask
        pipeline, _ = load_pipeline(bundle, ops_backend=ops_backend)
        pipeline.compute_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.pipeline: Any = pipeline.to(self.dev).eval()
        self.mean = torch.tensor(config.mean, dtype=torch.float32, device=self.dev).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32, device=self.dev).view(1, 3, 1, 1)
        self._graphs: dict[int, _Captured] = {}

    # -- steps ----------------------------------------------------------------------------------
    def frames_to_device(self, frames: list[np.ndarray]) -> Any:
        """B frames (H_i, W_i, 3) uint8 or float32 in [0, 1] -> (B, 3, S, S) float32 normalised, on the device.

        The same arithmetic as aminet_edge.data.images.preprocess: uint8 / 255, resize, (x - mean) / std.
        """
        torch = self.torch
        import torch.nn.functional as F

        if not frames:
            raise ValueError("run_frames needs at least one frame")
        for f in frames:
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype not in (np.uint8, np.float32):
                raise ValueError(f"frames must be (H, W, 3) uint8 or float32, got {f.shape} {f.dtype}")
        same = all(f.shape == frames[0].shape and f.dtype == frames[0].dtype for f in frames)
        groups = [np.stack(frames)] if same else [f[None] for f in frames]  # one upload per group
        out = []
        for g in groups:
            x = torch.from_numpy(g).to(self.dev, non_blocking=True).permute(0, 3, 1, 2)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            if tuple(x.shape[-2:]) != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                  antialias=True)
            out.append(x)
        x = out[0] if len(out) == 1 else torch.cat(out)
        return ((x - self.mean) / self.std).contiguous()

    def _packed(self, images: Any) -> Any:
        """(B, 3, S, S) -> (B, S*S + 1 + L) float32: amap, score and mask in one tensor (one copy out)."""
        torch = self.torch
        cudnn = torch.backends.cudnn
        exact = (cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                             allow_tf32=False) if self.precision == "fp32" else contextlib.nullcontext())
        with exact:  # "fp32" means fp32: cuDNN would run TF32 convolutions on SM 80+ by default
            amap, score, mask = self.pipeline(images)
        return self.torch.cat([amap.flatten(1).float(), score.float()[:, None], mask.float()], dim=1)

    def _capture(self, batch: int) -> _Captured:
        """Capture `_packed` for `batch` images as a CUDA graph (after warm-up runs on a side stream, so
        lazy work - Triton compilation, cuBLAS workspaces, cached smoothing matrices - is not captured)."""
        torch = self.torch
        static_in = torch.zeros((batch, 3, self.size, self.size), dtype=torch.float32, device=self.dev)
        side = torch.cuda.Stream(self.dev)
        side.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._packed(static_in)
        torch.cuda.current_stream(self.dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self._packed(static_in)
        except RuntimeError as exc:
            raise RuntimeError(f"CUDA graph capture of batch {batch} failed (ops_backend={self.ops_backend!r}): "
                               f"{exc}; run with cuda_graph=False") from exc
        return _Captured(static_in, static_out, graph.replay)

    def _forward(self, images: Any) -> BackendOutput:
        """images (B, 3, S, S) float32 on the device -> outputs on the host (one device -> host copy)."""
        n = int(images.shape[0])
        if self.cuda_graph:
            if n not in self._graphs:
                self._graphs[n] = self._capture(n)
            g = self._graphs[n]
            g.static_in.copy_(images)
            g.replay()
            packed = g.static_out
        else:
            packed = self._packed(images)
        host = packed.to("cpu", copy=True).numpy()  # copy: a replay overwrites static_out
        hw = self.size * self.size
        return BackendOutput(np.ascontiguousarray(host[:, :hw]).reshape(n, self.size, self.size),
                             np.ascontiguousarray(host[:, hw]), host[:, hw + 1:] > 0.5)

    def run(self, images: np.ndarray) -> BackendOutput:
        with self.torch.inference_mode():
            return self._forward(self.torch.from_numpy(images).to(self.dev, non_blocking=True))

    def run_frames(self, frames: list[np.ndarray]) -> BackendOutput:
        with self.torch.inference_mode():
            return self._forward(self.frames_to_device(frames))

    def close(self) -> None:
        self._graphs = {}
        self.pipeline = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def describe(self) -> str:
        where = str(self.dev)
        # the ops dispatcher serves the score map, and the adaptive mask unless the guide makes the mask
        mask = "nearest-normal guide mask (float32)" if self.mask == "nearest_normal" else "adaptive mask"
        extras = [f"ops: {self.ops_backend}", mask, self.precision]
        if self.takes_frames:
            extras.append("preprocess on device")
        if self.cuda_graph:
            extras.append("CUDA graphs per batch size")
        return f"torch {self.torch.__version__} {where} ({', '.join(extras)})"


def create(name: str, bundle: Path, config: BundleConfig, device: str = "cpu", ops_backend: str = "auto",
           threads: int | None = None, precision: str = "fp32", cuda_graph: bool = False,
           device_preprocess: bool | None = None, device_index: int = 0, **options: Any) -> Backend:
    """Registry entry point (see aminet_edge.runtime.backends). Options: ops_backend, threads, precision
    ("fp32", "fp16", "bf16"), cuda_graph, device_preprocess (default: on for cuda), device_index."""
    if options:
        raise TypeError(f"backend {name!r} got unknown option(s) {', '.join(sorted(options))}")
    return TorchBackend(bundle, config, device, ops_backend, threads, precision, cuda_graph, device_preprocess,
                        device_index)
