"""tensorrt backend: run the bundle's serialized engine with TensorRT 10 (Jetson, datacenter) or
TensorRT-RTX (RTX PCs). Torch-free.

Run path (TensorRT 10 / TensorRT-RTX Python API, both `tensorrt` and `tensorrt_rtx` expose it):
deserialize (`Runtime.deserialize_cuda_engine`) -> execution context -> one device buffer per I/O tensor
at the profile's maximum batch, bound once with `set_tensor_address` -> per call: copy the images in,
`set_input_shape` for the batch, `execute_async_v3(stream)`, copy the outputs out, synchronise.
Device memory and the stream come from pycuda, or cuda-python where pycuda is absent (cuda_memory.py).

Single engine (from model.onnx): images -> amap, score, mask.
Split engines (from model_a.onnx / model_b.onnx): engine A -> the CUDA adaptive_mask kernel -> engine B
-> the CUDA score_map kernel (aminet_edge.ops.cuda, libaminet_cuda.so), all enqueued on the same stream
and reading each other's device buffers in place (no host round trip). With the nearest-normal guide
(ModelConfig.mask) engine A outputs the mask itself, which engine B reads in place: no adaptive_mask
(the engines are built with the guide's bank baked in: export/guide_bank.py, graph_io.baked_model_a_io).

CUDA graphs (`cuda_graph=True`): with TensorRT-RTX the runtime captures the whole graph itself
(IRuntimeConfig.cuda_graph_strategy); with TensorRT 10 the enqueue is captured once per batch size
through cuda-python (stream capture) and replayed. Buffers never move, so the graphs stay valid; each
batch size is captured on an execution context of its own (EngineRunner.context_for), whose input
shapes are set once before capture and never changed, so no replay runs on a context re-shaped since.

Engines are tied to a GPU and a TensorRT version: a mismatch raises EngineError saying to rebuild.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import (BundleConfig, BundleError, artifact_path, engine_record, engine_records, read_config,
                                verify_record)
from aminet_edge.export.graph_io import MODEL_B_IO, SINGLE_OUTPUTS, baked_model_a_io, guided
from aminet_edge.runtime.backends import Backend, BackendOutput, BackendUnavailableError, EngineError, has_module

FLAVOURS = ("tensorrt_rtx", "tensorrt")  # python module names


@dataclass
class EngineInfo:
    """One recorded engine file and what it was built as. graph: "model" (single) or "model_a"/"model_b"
    (split). meta: its config.json record (aminet_edge.bundle)."""

    path: Path
    flavour: str  # "tensorrt" or "tensorrt_rtx"
    precision: str = ""
    target: str = ""
    graph: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)


def list_engines(bundle: str | Path, config: BundleConfig | None = None) -> list[EngineInfo]:
    """The engines config.json records (an engine file it does not record is never listed nor run)."""
    config = config if config is not None else read_config(bundle)
    return [EngineInfo(artifact_path(bundle, r["path"]), r["backend"], r["precision"], r["target"], r["graph"], r)
            for r in engine_records(bundle, config)]


def installed_flavours() -> list[str]:
    """The TensorRT flavours importable here (an empty `tensorrt` namespace left by stubs does not count)."""
    from aminet_edge.export.trt_compat import is_installed

    return [f for f in FLAVOURS if has_module(f) and is_installed(f)]


def _check_compatible(bundle: Path, info: EngineInfo) -> None:
    """aminet_edge.export.engine.check_compatible (TensorRT version, GPU; the file is not read) as
    EngineError / BackendUnavailableError."""
    from aminet_edge.export.engine import check_compatible

    try:
        check_compatible(bundle, info.meta)
    except ImportError as exc:  # BackendNotInstalledError
        raise BackendUnavailableError(str(exc)) from exc
    except RuntimeError as exc:  # EngineMismatchError
        raise EngineError(str(exc)) from exc


def verify_engine(bundle: Path, config: BundleConfig, info: EngineInfo) -> None:
    """The engine file's size, sha256 and weights against its record (aminet_edge.bundle.verify_record),
    as EngineError saying how to rebuild it."""
    from aminet_edge.export.engine import rebuild_hint

    try:
        verify_record(bundle, config, info.meta, "engine", rebuild_hint(bundle, info.meta))
    except BundleError as exc:
        raise EngineError(str(exc)) from exc


def find_engine(bundle: str | Path, config: BundleConfig | None = None, engine: str | Path | None = None,
                precision: str | None = None, split: bool | None = None) -> list[EngineInfo]:
    """The engine(s) to run: [single] or [model_a, model_b], for an installed TensorRT flavour.

    engine: an explicit file (relative to the bundle or absolute), which config.json must record;
    precision: "fp16"/"fp32" filter; split: True = the split pair (CUDA kernels between), False = the
    single engine, None = the single engine when the bundle has one (self-contained, no
    libaminet_cuda.so needed), else the pair. Among equals fp16 (the default build) is preferred.
    The chosen engines' records are checked against this machine (TensorRT version, GPU); their files'
    checksums are verified when the backend is created (verify_engine). EngineError names what is
    missing or mismatched and how to build it.
    """
    bundle = Path(bundle)
    config = config if config is not None else read_config(bundle)
    installed = installed_flavours()
    try:
        engines = list_engines(bundle, config)
        if engine is not None:
            record = engine_record(bundle, config, engine)
            engines = [e for e in engines if e.meta is record]
    except BundleError as exc:
        raise EngineError(str(exc)) from exc
    if engine is not None and engines[0].graph != "model":
        raise EngineError(f"{engines[0].path} is one half of a split engine; pass the single-graph engine or none")
    candidates = [e for e in engines if not precision or e.precision == precision]
    if not candidates:
        raise EngineError(f"{bundle}: no TensorRT engine{f' of precision {precision}' if precision else ''} "
                          f"recorded in its config.json; build one for this GPU (Jetson: "
                          f"export/jetson/build_engine.sh, RTX: export/rtx/build_engine_aot.sh, or "
                          f"aminet_edge.build_engine)")
    if split is not None:
        candidates = [e for e in candidates if (e.graph != "model") == split]
        if not candidates:
            kind = "split (model_a / model_b)" if split else "single-graph"
            raise EngineError(f"{bundle}: no {kind} TensorRT engine; build it with `aminet-edge build-engine "
                              f"{bundle}{' --split' if split else ''}`")
    usable = [e for e in candidates if e.flavour in installed]
    if not usable:
        kinds = sorted({e.flavour for e in candidates})
        raise BackendUnavailableError(f"{bundle}: the engines were built with {', '.join(kinds)}, which is not "
                                      f"installed here (installed: {', '.join(installed) or 'none'})")
    for e in usable:
        if not e.path.is_file():
            raise EngineError(f"engine {e.path} is recorded in config.json but the file is missing")
    # prefer fp16 (the default build), then a single engine over a split pair
    usable.sort(key=lambda e: (e.precision != "fp16", e.graph != "model"))
    best = usable[0]
    if best.graph == "model":
        chosen = [best]
    else:
        pair = {e.graph: e for e in usable if e.flavour == best.flavour and e.precision == best.precision}
        if set(pair) < {"model_a", "model_b"}:
            raise EngineError(f"{bundle}: split engine {best.path.name} lacks its other half "
                              f"({'model_b' if best.graph == 'model_a' else 'model_a'})")
        chosen = [pair["model_a"], pair["model_b"]]
    for e in chosen:
        _check_compatible(bundle, e)
    return chosen


def import_tensorrt(flavour: str) -> Any:
    """The `tensorrt` or `tensorrt_rtx` module; BackendUnavailableError naming what to install."""
    try:
        return importlib.import_module(flavour)
    except ImportError as exc:
        hint = "pip install 'aminet-edge[rtx]'" if flavour == "tensorrt_rtx" else "NVIDIA's tensorrt (JetPack)"
        raise BackendUnavailableError(f"the engine needs {flavour} ({hint}): {exc}") from exc


class EngineRunner:
    """One deserialized engine, its execution context and device buffers sized for the max batch.

    buffers: tensor name -> DeviceBuffer; `bind(name, buffer)` replaces an input's buffer (to read
    another engine's output in place) before the first run.
    """

    def __init__(self, trt: Any, memory: Any, info: EngineInfo, cuda_graph: bool, logger: Any) -> None:
        self.trt, self.memory, self.info = trt, memory, info
        data = info.path.read_bytes()
        self.runtime = trt.Runtime(logger)
        if hasattr(self.runtime, "get_engine_validity"):  # TensorRT-RTX: say why before trying
            validity, diagnostics = self.runtime.get_engine_validity(data)
            if validity == trt.EngineValidity.INVALID:
                raise EngineError(f"{info.path}: engine cannot run on this GPU/driver ({diagnostics}); "
                                  f"rebuild it for this GPU's compute capability")
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError(f"{info.path}: TensorRT {trt.__version__} could not deserialize the engine; it was "
                              f"built for another GPU or TensorRT version: rebuild it on this device")
        self.rtx_graphs = False
        self.runtime_config = None
        if hasattr(self.engine, "create_runtime_config"):  # TensorRT-RTX
            self.runtime_config = self.engine.create_runtime_config()
            if cuda_graph and hasattr(trt, "CudaGraphStrategy"):
                self.runtime_config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
                self.rtx_graphs = True
        self.context = self._new_context()
        # per_batch (set by the backend for manual graph capture): a captured graph replays the kernels of
        # its context's shapes, so each batch size gets its own context whose input shape never changes
        # (and its own activation memory); the shared `context` serves uncaptured runs via set_batch
        self.per_batch = False
        self.batch_contexts: dict[int, Any] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.max_batch = self._profile_max_batch()
        self.item_shapes: dict[str, tuple[int, ...]] = {}
        for n in self.inputs:  # per-image shapes, from the profile's max (batch dim dropped)
            self.item_shapes[n] = tuple(int(d) for d in self.engine.get_tensor_profile_shape(n, 0)[2])[1:]
            self.context.set_input_shape(n, (self.max_batch, *self.item_shapes[n]))
        for n in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(n))
            if min(shape) < 0:
                raise EngineError(f"{info.path}: output {n} has a data-dependent shape {shape}; not supported")
            self.item_shapes[n] = shape[1:]
        self.buffers = {n: memory.alloc(self.nbytes(n, self.max_batch)) for n in names}
        for n in names:
            self.context.set_tensor_address(n, self.buffers[n].ptr)
        self.batch = self.max_batch

    def _new_context(self) -> Any:
        if self.runtime_config is not None:
            context = self.engine.create_execution_context(self.runtime_config)
        else:
            context = self.engine.create_execution_context()
        if context is None:
            raise EngineError(f"{self.info.path}: could not create an execution context (out of GPU memory?)")
        return context

    def _profile_max_batch(self) -> int:
        first = next(n for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
                     if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT)
        fixed = int(self.engine.get_tensor_shape(first)[0])
        if fixed > 0:
            return fixed
        return int(self.engine.get_tensor_profile_shape(first, 0)[2][0])

    def nbytes(self, name: str, batch: int) -> int:
        return int(batch * int(np.prod(self.item_shapes[name], dtype=np.int64)) * self.dtypes[name].itemsize)

    def bind(self, name: str, buffer: Any) -> None:
        self.buffers[name] = buffer
        for context in (self.context, *self.batch_contexts.values()):
            context.set_tensor_address(name, buffer.ptr)

    def _set_shapes(self, context: Any, batch: int) -> None:
        for n in self.inputs:
            if not context.set_input_shape(n, (batch, *self.item_shapes[n])):
                raise EngineError(f"{self.info.path}: batch {batch} is outside the engine's profile "
                                  f"(max {self.max_batch})")

    def set_batch(self, batch: int) -> None:
        if batch != self.batch:
            self._set_shapes(self.context, batch)
            self.batch = batch

    def context_for(self, batch: int) -> Any:
        """The context to enqueue `batch` images on: the shared one re-shaped, or (per_batch) its own."""
        if not self.per_batch:
            self.set_batch(batch)
            return self.context
        if batch not in self.batch_contexts:
            context = self._new_context()
            self._set_shapes(context, batch)
            for n, buffer in self.buffers.items():
                context.set_tensor_address(n, buffer.ptr)
            self.batch_contexts[batch] = context
        return self.batch_contexts[batch]

    def enqueue(self, batch: int) -> None:
        if not self.context_for(batch).execute_async_v3(self.memory.stream):
            raise RuntimeError(f"{self.info.path}: execute_async_v3 failed (see the TensorRT log)")


class TensorRTBackend(Backend):
    """Single or split engines on one CUDA stream."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, bundle: Path, config: BundleConfig, device: str = "cuda", engine: str | Path | None = None,
                 precision: str | None = None, cuda_graph: bool = False, device_index: int = 0,
                 memory: str | None = None, split: bool | None = None) -> None:
        from aminet_edge.runtime.backends.cuda_memory import CudaMemory

        if device != "cuda":
            raise BackendUnavailableError("the tensorrt backend runs on device='cuda' only")
        infos = find_engine(bundle, config, engine, precision, split)
        for info in infos:
            verify_engine(bundle, config, info)  # each file hashed once per load
        self.infos = infos
        self.precision = infos[0].precision
        self.trt = import_tensorrt(infos[0].flavour)
        self.memory = CudaMemory.create(device_index, prefer=memory)
        self._closed = False
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.cuda_graph = cuda_graph
        self._graphs: dict[int, Any] = {}
        self.size = config.model.image_size
        self.grid = config.model.grid_size
        with self.memory.activate():
            self.runners = [EngineRunner(self.trt, self.memory, i, cuda_graph, self.logger) for i in infos]
            self.split = len(self.runners) == 2
            if self.split:
                self._setup_split(config)
            self.max_batch = min(r.max_batch for r in self.runners)
            first = self.runners[0]
            self.host_in = self.memory.pinned((self.max_batch, 3, self.size, self.size), np.float32)
            outs = self._output_buffers()
            self.host_out = {n: self.memory.pinned((self.max_batch, *shape), dtype)
                             for n, (_, shape, dtype) in outs.items()}
            self._outs = outs
            if "images" not in first.buffers:
                raise EngineError(f"{infos[0].path}: the engine has no input tensor named 'images'")
            self._in = first.buffers["images"]
        # manual capture for TensorRT 10; TensorRT-RTX captures inside the runtime (rtx_graphs)
        self._manual_graphs = cuda_graph and not any(r.rtx_graphs for r in self.runners)
        if self._manual_graphs and not self.memory.supports_graphs:
            raise BackendUnavailableError(f"cuda_graph=True with {infos[0].flavour} needs cuda-python for stream "
                                          f"capture (pip install cuda-python), {self.memory.name} cannot capture")
        for r in self.runners:
            r.per_batch = self._manual_graphs

    # -- split pipeline -------------------------------------------------------------------------
    def _setup_split(self, config: BundleConfig) -> None:
        from aminet_edge.ops import cuda as kernels

        reason = kernels.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"split engines need the CUDA kernels: {reason}")
        self.kernels = kernels
        a, b = self.runners
        self.guided = guided(config.model.mask)
        a_outputs = baked_model_a_io(config.model.mask, config.score.map)[1]
        for n in a_outputs:
            if n not in a.outputs:
                raise EngineError(f"{a.info.path}: engine A lacks output {n!r} (the bundle's mask is "
                                  f"{config.model.mask!r}, its score map {config.score.map!r}; rebuild the "
                                  "engines from this bundle's graphs)")
        # the guide's token distances (B, L) float32, added to the score map by the CUDA kernel
        self.guide_map = "guide_distance" in a_outputs
        if self.guide_map and a.dtypes["guide_distance"] != np.float32:
            raise EngineError(f"{a.info.path}: guide_distance must be float32, got {a.dtypes['guide_distance']}")
        if set(b.inputs) != set(MODEL_B_IO[0]) or "recon" not in b.outputs:
            raise EngineError(f"{b.info.path}: engine B must map (inpaint_tokens, mask) -> recon")
        b.bind("inpaint_tokens", a.buffers["inpaint_tokens"])  # B reads A's output in place
        batch = min(a.max_batch, b.max_batch)
        L, D = a.item_shapes["inpaint_tokens"]
        C, h, w = a.item_shapes["features"]
        S = self.size
        self.dims = {"L": L, "D": D, "C": C, "h": h, "w": w}
        for name in ("features",) if self.guided else ("cluster_tokens", "features"):
            if a.dtypes[name] not in (np.float32, np.float16):
                raise EngineError(f"{a.info.path}: {name} must be float32 or float16, got {a.dtypes[name]}")
        if a.dtypes["features"] != b.dtypes["recon"]:
            raise EngineError(f"{a.info.path} / {b.info.path}: features and recon dtypes differ")
        mask_dtype = b.dtypes["mask"]
        if mask_dtype != np.bool_:
            raise EngineError(f"{b.info.path}: input mask must be bool, got {mask_dtype}")
        if self.guided:  # the nearest-normal guide's mask, computed in engine A: B reads it in place
            if a.dtypes["mask"] != np.bool_:
                raise EngineError(f"{a.info.path}: output mask must be bool, got {a.dtypes['mask']}")
            b.bind("mask", a.buffers["mask"])
        else:  # the adaptive_mask kernel's scratch outputs
            self.dims["P"] = a.item_shapes["centers"][0]
            self.min_dist = self.memory.alloc(batch * L * 4)
            self.assign = self.memory.alloc(batch * L * 8)
        self.amap = self.memory.alloc(batch * S * S * 4)
        self.score = self.memory.alloc(batch * 4)
        self.grid = config.model.grid_size  # token grid side (square): the guide map's smoothing matrix
        self.guide_weight = float(config.score.guide_weight)
        sizes = {"a_h": h, "a_w": w, "a_g": self.grid}
        self._mats, self.mats = [], {}
        for name, side in sizes.items():
            src = np.ascontiguousarray(kernels.smoothing_matrix(side, S, config.score.sigma))
            host = self.memory.pinned(src.shape, np.float32)
            host[...] = src
            self._mats.append(host)
            self.mats[name] = self.memory.alloc(src.nbytes)
            self.memory.htod(self.mats[name], host)
        self.workspace = self.memory.alloc(kernels.score_map_workspace_bytes(batch, h, w, S, self.grid))
        self.lam = float(config.model.mask_lambda)
        self.image_score_code = kernels.SCORE_MAX if config.score.image_score == "max" else kernels.SCORE_STD
        self.memory.synchronize()

    def _output_buffers(self) -> dict[str, tuple[Any, tuple[int, ...], np.dtype]]:
        """name -> (device buffer, per-image shape, dtype) of amap, score, mask."""
        S = self.size
        if not self.split:
            r = self.runners[0]
            missing = [n for n in SINGLE_OUTPUTS if n not in r.outputs]
            if missing:
                raise EngineError(f"{r.info.path}: engine lacks output(s) {', '.join(missing)}")
            return {n: (r.buffers[n], r.item_shapes[n], r.dtypes[n]) for n in SINGLE_OUTPUTS}
        a, b = self.runners
        return {"amap": (self.amap, (S, S), np.dtype(np.float32)), "score": (self.score, (), np.dtype(np.float32)),
                "mask": (b.buffers["mask"], (self.dims["L"],), np.dtype(np.bool_))}

    def _enqueue(self, batch: int) -> None:
        """Everything between the input copy and the output copies, on the one stream."""
        if not self.split:
            self.runners[0].enqueue(batch)
            return
        a, b = self.runners
        d, k = self.dims, self.kernels
        dtype_feat = k.DTYPE_FLOAT16 if a.dtypes["features"] == np.float16 else k.DTYPE_FLOAT32
        stream = self.memory.stream
        a.enqueue(batch)
        if not self.guided:  # with the guide, engine A wrote the mask into B's input already
            dtype_tokens = k.DTYPE_FLOAT16 if a.dtypes["cluster_tokens"] == np.float16 else k.DTYPE_FLOAT32
            k.adaptive_mask(a.buffers["cluster_tokens"].ptr, a.buffers["centers"].ptr, dtype_tokens, batch, d["L"],
                            d["P"], d["D"], self.lam, b.buffers["mask"].ptr, self.min_dist.ptr, self.assign.ptr,
                            stream)
        b.enqueue(batch)
        m = self.mats
        guide: dict[str, Any] = {"token_map": a.buffers["guide_distance"].ptr, "gh": self.grid, "gw": self.grid,
                 "a_hg": m["a_g"].ptr, "a_wg": m["a_g"].ptr, "token_weight": self.guide_weight} if self.guide_map else {}
        k.score_map(a.buffers["features"].ptr, b.buffers["recon"].ptr, dtype_feat, batch, d["C"], d["h"], d["w"],
                    m["a_h"].ptr, self.size, m["a_w"].ptr, self.size, self.image_score_code, self.amap.ptr,
                    self.score.ptr, self.workspace.ptr, stream, **guide)

    def run(self, images: np.ndarray) -> BackendOutput:
        n = images.shape[0]
        if n > self.max_batch:
            raise ValueError(f"batch {n} exceeds the engine's maximum {self.max_batch}")
        memory = self.memory
        with memory.activate():
            self.host_in[:n] = images
            memory.htod(self._in, self.host_in, self.runners[0].nbytes("images", n))
            if self._manual_graphs:
                if n not in self._graphs:
                    self._enqueue(n)  # a first, uncaptured run lets TensorRT finish its lazy set-up
                    memory.synchronize()
                    memory.begin_capture()
                    self._enqueue(n)
                    self._graphs[n] = memory.end_capture()
                memory.launch(self._graphs[n])
            else:
                self._enqueue(n)
            for name, (buffer, shape, dtype) in self._outs.items():
                nbytes = int(n * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
                memory.dtoh(self.host_out[name], buffer, nbytes)
            memory.synchronize()
            out = {k: np.array(v[:n]) for k, v in self.host_out.items()}
        return BackendOutput(out["amap"].astype(np.float32, copy=False), out["score"].astype(np.float32, copy=False),
                             out["mask"].astype(bool, copy=False))

    def close(self) -> None:
        if not self._closed:
            with self.memory.activate():
                self.runners = []  # contexts and engines go before their memory
                self._graphs = {}
                self.memory.close()
            self._closed = True

    def describe(self) -> str:
        kind = "single engine"
        if self.split:
            kind = ("split engines (mask from engine A's nearest-normal guide) + CUDA score_map" if self.guided
                    else "split engines + CUDA adaptive_mask and score_map")
        names = ", ".join(i.path.name for i in self.infos)
        return (f"{self.infos[0].flavour} {self.trt.__version__} cuda ({kind}: {names}; memory via "
                f"{self.memory.name}; cuda_graph={self.cuda_graph})")


def create(name: str, bundle: Path, config: BundleConfig, device: str = "cuda", engine: str | Path | None = None,
           precision: str | None = None, cuda_graph: bool = False, device_index: int = 0,
           memory: str | None = None, split: bool | None = None, **options: Any) -> Backend:
    """Registry entry point (see aminet_edge.runtime.backends). Options: engine, precision, cuda_graph,
    device_index, memory ("pycuda" / "cuda-python" preference), split."""
    if options:
        raise TypeError(f"backend {name!r} got unknown option(s) {', '.join(sorted(options))}")
    return TensorRTBackend(bundle, config, device, engine, precision, cuda_graph, device_index, memory, split)


def describe_engines(bundle: str | Path, config: BundleConfig | None = None) -> str:
    """The bundle's engines as JSON lines (for `aminet-edge info` style listings)."""
    return "\n".join(json.dumps({"path": str(e.path), "flavour": e.flavour, "precision": e.precision,
                                 "target": e.target, "graph": e.graph}) for e in list_engines(bundle, config))
