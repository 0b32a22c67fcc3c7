"""OpenVINO backends (CPU): the bundle's exported fp32 ONNX graphs compiled by OpenVINO's CPU plugin.

Single ("openvino"): model.onnx, images (B, 3, S, S) -> amap (B, S, S), score (B,), mask (B, L). With the
nearest-normal guide the graph also takes the guide's bank (graph_io.GUIDE_BANK): read from the weights
file at load and bound to that input as a Constant sharing the array's memory before compiling
(`bind_constant`), so each call sets the images only and OpenVINO prepares the bank for its MatMul once:
fed as an input instead, the single graph took 1.2x the time per image at batch 1 (625 vs 523 ms, the
bench pair of bench/guide_cost.py --build, fp32; equal at batch 8).
Split ("openvino-split"): model_a.onnx -> C++ adaptive_mask -> model_b.onnx -> C++ score_map, as
onnxruntime-split does (with the nearest-normal guide the C++ nearest_distance kernel makes the mask from
model_a's guide_tokens: split_graphs.py).

precision (of what runs; fp32 and bf16 read the fp32 graphs, int8 its own):
- "fp32": every node in float32; equals onnxruntime fp32 to rounding (tests/test_openvino_backend.py).
- "bf16": INFERENCE_PRECISION_HINT=bf16, meant as mixed precision: every node outside the backbone and
  the transformers (the adaptive mask's distances, boundaries and comparison, or the nearest-normal
  guide's distances and threshold, the score map, the token glue between them, and the inpainting head,
  a transposed convolution traced as a function) is marked `disable_fp16_compression` in its rt_info to
  stay float32. Whether the CPU plugin honours the marks is read back from the compiled model
  (`ignored_marks`: each executed node's runtimePrecision): OpenVINO 2026.4 ignores them under bf16 (its
  runtime model is identical with and without them), so the score map, the mask's distances and the guide
  run in bf16 too and maps and scores move by ~1 % or more; describe() says so. In the split backend the
  adaptive mask and the score map are the C++ kernels, float32 by construction, but they read model_a's
  bf16 features (maps ~6e-4 off fp32 on the test bundle); so are the guide's distances, from model_a's
  pooled features (the pooling marked).
  Needs a CPU with native bf16 (AVX512_BF16 or AMX: OpenVINO lists "BF16" in OPTIMIZATION_CAPABILITIES);
  OpenVINO would silently run fp32 elsewhere, so asking for it there is an error.
- "int8" (single graph only): model_int8_static.onnx, written by `aminet-edge export RUN --precision int8
  --calibration-data DATA` (aminet_edge.export.quantize.quantize_static): the inpainting branch in int8
  with scales calibrated on normal training images; backbone, clustering, mask and score map float32.
- None (default): "fp32" on every CPU. bf16 is opt-in: even where the plugin keeps the marked nodes
  float32, the backbone's bf16 features move the maps by ~6e-4 and flip ~6 % of the test bundle's mask
  tokens (the split path, whose kernels are float32), beyond the fp32 agreement users rely on.
  int8 is never this backend's default; `Detector.load(backend="auto")` times it only when its graph's
  record says it passed validation (bundle.int8_accepted; BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy").
Compiled models are cached in <bundle>/cache/openvino (OpenVINO CACHE_DIR: a cache, not a bundle
artifact). OpenVINO keys each blob by a hash of the model (rt_info included), the compile options and
its own version, so a stale or foreign blob is never used, only ignored; a read-only bundle runs uncached.
Imports openvino and numpy only (never torch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError
from aminet_edge.bundle import graph_file, has_graph, onnx_name
from aminet_edge.export.graph_io import GUIDE_BANK, MODEL_B_IO, SINGLE_OUTPUTS, guided, model_a_io
from aminet_edge.export.node_names import in_network
from aminet_edge.runtime.backends import Backend, BackendOutput, BackendUnavailableError

log = logging.getLogger("aminet_edge.runtime")

PRECISIONS = ("fp32", "bf16", "int8")
INT8_GRAPH = "int8_static"  # the bundle precision of the int8 graph
INT8_EXPORT = "aminet-edge export {bundle} --precision int8 --calibration-data DATA"
CACHE_DIR = Path("cache") / "openvino"  # relative to the bundle
KEEP_FP32 = "disable_fp16_compression_0"  # rt_info key of ov::disable_fp16_compression (also read for bf16)


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "the openvino backend needs openvino (pip install 'aminet-edge[openvino]')") from exc
    return openvino


def cpu_capabilities(core: Any | None = None) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU, e.g. ["FP32", "BF16", "INT8", ...]."""
    core = core or _ov().Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def resolve_precision(precision: str | None, capabilities: list[str]) -> str:
    """The precision to compile: `precision`, or "fp32" for None (bf16 and int8 are opt-in); ValueError
    or BackendUnavailableError when `capabilities` (the CPU's) cannot run it."""
    if precision is None:
        return "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"openvino precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")
    if precision == "bf16" and "BF16" not in capabilities:
        raise BackendUnavailableError(
            f"this CPU has no native bf16 (OpenVINO OPTIMIZATION_CAPABILITIES {capabilities}: needs AVX512_BF16 "
            "or AMX); use precision='fp32'")
    return precision


def int8_graph(bundle: Path, config: BundleConfig) -> Path:
    """model_int8_static.onnx, verified (size, sha256, weights); BundleError saying how to export it."""
    if has_graph(config, "model", INT8_GRAPH) or config.legacy:
        return graph_file(bundle, config, "model", INT8_GRAPH)
    path = bundle / onnx_name("model", INT8_GRAPH)
    what = ("lies in the bundle but is not recorded in config.json (left from an earlier export?)"
            if path.exists() else "not found")
    raise BundleError(
        f"{path} (OpenVINO's int8 graph) {what}: export it with `" + INT8_EXPORT.format(bundle=bundle)
        + "` (DATA: a data set whose training images are normal, e.g. the one trained on; needs "
        "pip install 'aminet-edge[openvino]'), or use precision='fp32'")


def keep_fp32(model: Any) -> list[str]:
    """Mark every node of `model` (an ov.Model read from an exported graph) that no network module ran
    (node_names.in_network: the guide's nodes are marked too) to stay float32 under a bf16 inference hint;
    returns the marked nodes' friendly names."""
    marked = []
    for node in model.get_ops():
        if node.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        if not in_network(node.get_friendly_name()):  # nodes OpenVINO made itself stay float32 too
            node.get_rt_info()[KEEP_FP32] = ""
            marked.append(node.get_friendly_name())
    return marked


def ignored_marks(compiled: Any, marked: list[str]) -> list[str]:
    """The nodes of `marked` (keep_fp32's) that `compiled` runs in bf16 all the same, read back from its
    runtime model: an executed node whose runtimePrecision is bf16 runs the original nodes it names in
    originalLayersNames (several when fused) in bf16. Empty when the CPU plugin honours the marks."""
    keep, ignored = set(marked), set[str]()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["runtimePrecision"].astype(str) == "bf16":
            ignored.update(n for n in info["originalLayersNames"].astype(str).split(",") if n in keep)
    return sorted(ignored, key=lambda n: (not n.startswith("/"), n))  # the exported graph's names first


def cache_dir(bundle: Path, cache: str | Path | bool | None) -> Path | None:
    """Where compiled models are cached: None/True -> <bundle>/cache/openvino, a path -> it, False -> none.

    None when the folder cannot be created or written (a read-only bundle): the model is then compiled
    at every load.
    """
    if cache is False:
        return None
    path = bundle / CACHE_DIR if cache in (None, True) else Path(cache)  # type: ignore[arg-type]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("OpenVINO model cache disabled: cannot create %s (%s)", path, exc)
        return None
    if not os.access(path, os.W_OK):
        log.warning("OpenVINO model cache disabled: %s is not writable", path)
        return None
    return path


def bind_constant(model: Any, path: Path, name: str, value: np.ndarray) -> None:
    """Replace input `name` of `model` (an ov.Model read from `path`) by a Constant sharing `value`'s memory
    (`value` must outlive the compiled model); BundleError when the graph has no such input."""
    from openvino import opset13

    param = next((p for p in model.get_parameters() if name in p.output(0).get_names()), None)
    if param is None:
        raise BundleError(f"{path}: graph lacks input {name}; re-export the bundle with this aminet-edge")
    param.output(0).replace(opset13.constant(value, shared_memory=True).output(0))
    model.remove_parameter(param)
    model.validate_nodes_and_infer_types()


def compile_graph(core: Any, path: Path, precision: str, threads: int | None, cache: Path | None,
                  constants: dict[str, np.ndarray] | None = None) -> tuple[Any, list[str]]:
    """Read the ONNX graph at `path`, bind `constants` to their inputs (`bind_constant`), mark its
    precision-sensitive nodes, compile it for the CPU; returns the compiled model and, for bf16, the marked
    nodes it runs in bf16 anyway (`ignored_marks`)."""
    if not path.is_file():
        raise BundleError(f"{path} not found: export the bundle first (`aminet-edge export`)")
    # compiled from the in-memory model, never from the path: OpenVINO keys a path's cache entry by the
    # path alone, so a re-exported graph would load the old compiled model (seen with 2026.4); an
    # in-memory model's key hashes its content and rt_info
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises its own exception types for corrupt/unsupported graphs
        raise BundleError(f"{path}: OpenVINO cannot read this graph ({type(exc).__name__}: {exc})") from exc
    for name, value in (constants or {}).items():
        bind_constant(model, path, name, value)
    marked = keep_fp32(model) if precision == "bf16" else []
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    try:
        compiled = core.compile_model(model, "CPU", config)
    except Exception as exc:
        raise BundleError(f"{path}: OpenVINO cannot compile this graph ({type(exc).__name__}: {exc})") from exc
    return compiled, ignored_marks(compiled, marked) if marked else []


def _check_io(compiled: Any, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    have_in = {n for p in compiled.inputs for n in p.get_names()}
    have_out = {n for p in compiled.outputs for n in p.get_names()}
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise BundleError(f"{path}: graph lacks tensor(s) {', '.join(missing)} (inputs {sorted(have_in)}, "
                          f"outputs {sorted(have_out)}); re-export the bundle with this aminet-edge")


class OpenVinoBackend(Backend):
    """model.onnx (or model_a + C++ adaptive_mask + model_b + C++ score_map with `split`) on OpenVINO CPU.

    threads: inference threads (None = OpenVINO's choice, all cores); cache: see `cache_dir`.
    `ignored`: with precision "bf16", the marked nodes the plugin runs in bf16 anyway (`ignored_marks`).
    """

    def __init__(self, bundle: Path, config: BundleConfig, split: bool = False, threads: int | None = None,
                 precision: str | None = None, cache: str | Path | bool | None = None) -> None:
        ov = _ov()
        self.name = "openvino-split" if split else "openvino"
        self.device = "cpu"
        core = ov.Core()
        self.capabilities = cpu_capabilities(core)
        self.precision = resolve_precision(precision, self.capabilities)
        self.cache = cache_dir(bundle, cache)
        self.split = split
        if split and self.precision == "int8":
            raise ValueError("openvino-split has no int8 graphs: int8 is the single graph's (backend='openvino')")
        if split:
            from aminet_edge.runtime.backends.split_graphs import SplitGlue

            self.paths = [graph_file(bundle, config, "model_a"), graph_file(bundle, config, "model_b")]  # verified
            self.glue = SplitGlue(bundle, config)
            io = [model_a_io(config.model.mask), MODEL_B_IO]
        else:  # verified: size, sha256, weights
            self.paths = [int8_graph(bundle, config) if self.precision == "int8" else graph_file(bundle, config, "model")]
            io = [(("images",), SINGLE_OUTPUTS)]  # the guide's bank input is bound below
        self.bank: dict[str, np.ndarray] = {}  # kept alive: the compiled model shares its memory
        if not split and guided(config.model.mask):
            from aminet_edge.export.guide_bank import read_guide

            self.bank[GUIDE_BANK] = read_guide(bundle, config).bank32
        done = [compile_graph(core, p, self.precision, threads, self.cache, self.bank) for p in self.paths]
        self.compiled, self.ignored = [c for c, _ in done], [n for _, ignored in done for n in ignored]
        for compiled, path, (inputs, outputs) in zip(self.compiled, self.paths, io):
            _check_io(compiled, path, inputs, outputs)
        self.requests = [c.create_infer_request() for c in self.compiled]

    def _infer(self, k: int, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        result = self.requests[k].infer(inputs)
        return [np.asarray(result[self.compiled[k].output(n)]) for n in outputs]

    def run(self, images: np.ndarray) -> BackendOutput:
        if not self.split:
            amap, score, mask = self._infer(0, {"images": images}, SINGLE_OUTPUTS)
            return BackendOutput(np.asarray(amap, np.float32), np.asarray(score, np.float32), np.asarray(mask, bool))
        a = dict(zip(self.glue.a_outputs, self._infer(0, {"images": images}, self.glue.a_outputs)))
        mask = self.glue.mask(a)
        (recon,) = self._infer(1, {"inpaint_tokens": a["inpaint_tokens"], "mask": mask}, ("recon",))
        amap, score = self.glue.score_map(a, recon)
        return BackendOutput(amap, score, mask)

    def close(self) -> None:
        self.requests, self.compiled = [], []

    def describe(self) -> str:
        what = (f"{self.paths[0].name} + {self.glue.mask_step} + {self.paths[1].name} + C++ score_map" if self.split
                else self.paths[0].name)
        kernels = ("C++ kernels fp32 on bf16 features" if self.split else "mask + score map fp32")
        mixed = {"bf16": f", backbone + transformers bf16, {kernels}",
                 "int8": ", inpainting transformer int8, the rest fp32"}.get(self.precision, "")
        if self.precision == "bf16" and self.ignored:
            mixed = (f", bf16 wherever OpenVINO takes it: the float32 marks were ignored ({len(self.ignored)} "
                     f"marked nodes run bf16, e.g. {', '.join(self.ignored[:3])})"
                     + (", C++ kernels fp32 on bf16 features" if self.split else ""))
        cache = f"cache {self.cache}" if self.cache is not None else "no cache"
        return f"{self.name} cpu ({what}, {self.precision}{mixed}; {cache})"


def create(name: str, bundle: Path, config: BundleConfig, device: str = "cpu", threads: int | None = None,
           precision: str | None = None, cache: str | Path | bool | None = None, **options: Any) -> Backend:
    """Registry entry point (see aminet_edge.runtime.backends). Options: threads, precision, cache."""
    if options:
        raise TypeError(f"backend {name!r} got unknown option(s) {', '.join(sorted(options))}")
    return OpenVinoBackend(bundle, config, name == "openvino-split", threads, precision, cache)
