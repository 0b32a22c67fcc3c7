"""onnxruntime backends: the single exported graph, or the split graphs with the C++ kernels between them.

Single ("onnxruntime"): model.onnx, images (B, 3, S, S) -> amap (B, S, S), score (B,), mask (B, L); the
two fused ops run as the reference's ONNX nodes. With the nearest-normal guide the graph also takes the
guide's bank (graph_io.GUIDE_BANK), read from the weights file at load into one OrtValue (on the GPU for
device "cuda") that every call feeds as it is: no per-call copy.
Split ("onnxruntime-split", CPU): model_a.onnx (images -> features, cluster_tokens, centers,
inpaint_tokens), then the C++ adaptive_mask kernel, model_b.onnx (inpaint_tokens, mask -> recon), then
the C++ score_map kernel; with the nearest-normal guide model_a outputs features, guide_tokens,
inpaint_tokens and the C++ nearest_distance kernel makes the mask (aminet_edge.export.graph_io,
split_graphs.py). Same outputs; faster on CPU for wide (WideResNet) features (bench/runtime.py).
precision: "fp32", "int8" (`aminet-edge export --precision int8`: the inpainting MatMuls quantised,
aminet_edge.export.quantize) or "fp16"; default (None) int8 when the bundle has it, else fp32.
int8 graphs quantise activations with one scale per tensor computed at run time, so a batch's images
would change each other's scores (by up to 0.5 % on MVTec bottle); they run one image per call instead
(`_run`), which makes every result independent of its batch; the price is batching's gain on the
quantised part (BENCHMARKS.md, "CPU inference end to end", Xeon: int8 single graph 29.8 ms per image at
batch 8 vs 32.3 at batch 1).
Imports onnxruntime and numpy only (never torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError, graph_file, has_graph
from aminet_edge.export.graph_io import GUIDE_BANK, MODEL_B_IO, guided, single_io
from aminet_edge.runtime.backends import Backend, BackendOutput, BackendUnavailableError


# onnxruntime's idle threads busy-wait by default; between the two halves of the split pipeline that
# steals the cores the C++ (OpenMP) kernels need next. Measured by bench/runtime.py.
SPLIT_SPINNING: bool | None = False
PRECISIONS = ("fp32", "fp16", "int8")  # of the graphs it runs (the bundle's int8_static is OpenVINO's)


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the onnxruntime backend needs onnxruntime (pip install 'aminet-edge[onnxruntime]')") from exc
    return onnxruntime


def make_session(path: Path, device: str = "cpu", threads: int | None = None, spinning: bool | None = None) -> Any:
    """An InferenceSession on `path` with full graph optimisation; `threads` intra-op threads (None = all cores).

    spinning: whether idle intra-op threads busy-wait for the next op (onnxruntime's default, None = keep
    it). Sequential execution keeps results bit-identical from call to call for the same batch.
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: shape-inference warnings of the exported graph are noise
    if threads:
        options.intra_op_num_threads = int(threads)
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt/incompatible graphs
        raise BundleError(f"{path}: onnxruntime cannot load this graph ({type(exc).__name__}: {exc})") from exc


def resolve_graph(bundle: Path, config: BundleConfig, part: str, precision: str | None,
                  verify: bool = False) -> tuple[Path, str]:
    """The recorded graph file of `part` ("model", "model_a", "model_b") at `precision` and the precision
    it has; with verify, its size, sha256 and weights are checked (aminet_edge.bundle.graph_file).

    None picks the int8 graph when it was exported, else fp32. BundleError names the missing or
    unrecorded file and the export command that writes it.
    """
    if precision is None:
        precision = "int8" if has_graph(config, part, "int8") else "fp32"
    elif precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")
    return graph_file(bundle, config, part, precision, verify=verify), precision


def _check_io(session: Any, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...],
              image_size: int | None = None) -> None:
    """The graph has these tensors, and its "images" input takes (B, 3, image_size, image_size)."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise BundleError(f"{path}: graph lacks tensor(s) {', '.join(missing)} (inputs {sorted(have_in)}, "
                          f"outputs {sorted(have_out)}); re-export the bundle with this aminet-edge")
    for i in session.get_inputs():
        if i.name == "images" and image_size is not None and list(i.shape[1:]) != [3, image_size, image_size]:
            raise BundleError(f"{path}: graph input images is {i.shape}, the bundle's config says "
                              f"(B, 3, {image_size}, {image_size}); re-export the bundle (`aminet-edge export`)")


def _run(session: Any, outputs: list[str], feeds: dict[str, np.ndarray], one_by_one: bool,
         constant: dict[str, Any] | None = None) -> list[np.ndarray]:
    """`session.run(outputs, feeds | constant)`; with one_by_one, one image (leading index of `feeds`) per
    call, outputs concatenated (int8 graphs, see the module docstring). constant: inputs fed whole to every
    call (the guide's bank OrtValue)."""
    constant = constant or {}
    if not one_by_one:
        return list(session.run(outputs, {**feeds, **constant}))
    n = len(next(iter(feeds.values())))
    runs = [session.run(outputs, {**{k: v[i:i + 1] for k, v in feeds.items()}, **constant}) for i in range(n)]
    return [np.concatenate(parts) for parts in zip(*runs)]


def _fixed_batch(session: Any, name: str) -> int | None:
    """The graph's batch size when its input `name` has a fixed leading dimension, else None."""
    for i in session.get_inputs():
        if i.name == name and i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0:
            return int(i.shape[0])
    return None


class OnnxRuntimeBackend(Backend):
    """model.onnx in one InferenceSession."""

    name = "onnxruntime"

    def __init__(self, bundle: Path, config: BundleConfig, device: str = "cpu", threads: int | None = None,
                 spinning: bool | None = None, precision: str | None = None) -> None:
        self.device = device
        self.path, self.precision = resolve_graph(bundle, config, "model", precision, verify=True)
        self.session = make_session(self.path, device, threads, spinning)
        _check_io(self.session, self.path, *single_io(config.model.mask), config.model.image_size)
        self.max_batch = _fixed_batch(self.session, "images")
        self.exact_batch = self.max_batch is not None
        self.constant: dict[str, Any] = {}
        if guided(config.model.mask):
            from aminet_edge.export.guide_bank import read_guide

            # an OrtValue wraps the array (CPU) or holds its one device copy (cuda); it keeps the array alive
            self.constant[GUIDE_BANK] = _ort().OrtValue.ortvalue_from_numpy(read_guide(bundle, config).bank32,
                                                                            device, 0)

    def run(self, images: np.ndarray) -> BackendOutput:
        amap, score, mask = _run(self.session, ["amap", "score", "mask"], {"images": images},
                                 self.precision == "int8" and not self.exact_batch, self.constant)
        return BackendOutput(np.asarray(amap, np.float32), np.asarray(score, np.float32), np.asarray(mask, bool))

    def close(self) -> None:
        self.session = None

    def describe(self) -> str:
        return f"onnxruntime {self.device} ({self.path.name}, {self.session.get_providers()[0]})"


class OnnxRuntimeSplitBackend(Backend):
    """model_a.onnx -> C++ adaptive_mask (or nearest_distance, with the nearest-normal guide) -> model_b.onnx ->
    C++ score_map, all on the CPU."""

    name = "onnxruntime-split"

    def __init__(self, bundle: Path, config: BundleConfig, device: str = "cpu", threads: int | None = None,
                 spinning: bool | None = SPLIT_SPINNING, precision: str | None = None) -> None:
        from aminet_edge.runtime.backends.split_graphs import SplitGlue

        self.device = device
        self.path_b, self.precision = resolve_graph(bundle, config, "model_b", precision, verify=True)
        # int8 quantises only the inpainting blocks, which live in model_b: model_a stays fp32
        a_precision = "fp32" if self.precision == "int8" else self.precision
        self.path_a, _ = resolve_graph(bundle, config, "model_a", a_precision, verify=True)
        self.glue = SplitGlue(bundle, config)  # after the graphs' checks: an older guided graph is refused first
        self.session_a = make_session(self.path_a, device, threads, spinning)
        self.session_b = make_session(self.path_b, device, threads, spinning)
        _check_io(self.session_a, self.path_a, ("images",), self.glue.a_outputs, config.model.image_size)
        _check_io(self.session_b, self.path_b, *MODEL_B_IO)
        fixed = [_fixed_batch(self.session_a, "images"), _fixed_batch(self.session_b, "inpaint_tokens")]
        batches = [b for b in fixed if b is not None]
        self.max_batch = min(batches) if batches else None
        self.exact_batch = self.max_batch is not None

    def run(self, images: np.ndarray) -> BackendOutput:
        a = dict(zip(self.glue.a_outputs, self.session_a.run(list(self.glue.a_outputs), {"images": images})))
        mask = self.glue.mask(a)
        (recon,) = _run(self.session_b, ["recon"], {"inpaint_tokens": a["inpaint_tokens"], "mask": mask},
                        self.precision == "int8" and not self.exact_batch)
        amap, score = self.glue.score_map(a, recon)
        return BackendOutput(amap, score, mask)

    def close(self) -> None:
        self.session_a = self.session_b = None

    def describe(self) -> str:
        return (f"onnxruntime-split cpu ({self.path_a.name} + {self.glue.mask_step} + {self.path_b.name} "
                "+ C++ score_map)")


def create(name: str, bundle: Path, config: BundleConfig, device: str = "cpu", threads: int | None = None,
           spinning: bool | None = None, precision: str | None = None, **options: Any) -> Backend:
    """Registry entry point (see aminet_edge.runtime.backends). Options: threads, spinning, precision."""
    if options:
        raise TypeError(f"backend {name!r} got unknown option(s) {', '.join(sorted(options))}")
    if name == "onnxruntime-split":
        return OnnxRuntimeSplitBackend(bundle, config, device, threads,
                                       SPLIT_SPINNING if spinning is None else spinning, precision)
    return OnnxRuntimeBackend(bundle, config, device, threads, spinning, precision)
