"""Where the time of `Detector.predict` goes on the CPU: a per-stage breakdown of the best paths.

Usage: python bench/stages.py [--batches 1 8] [--repeats 7] [--profile-runs 5] [--bundle DIR] [--threads N]

Paths (bench bundle of bench/runtime.py, cpu preset, 512x512 uint8 frames): torch eager (the reference
ops, the baseline), openvino fp32 (single graph), openvino int8 (static, single graph), onnxruntime-split
+ C++ int8, onnxruntime int8 (single graph, the goal's yardstick), whatever `Detector.load(backend="auto")`
picks, and that path again with the host steps on Pillow / numpy instead of the C++ kernels
(aminet_edge.runtime.host_kernels) as the before/after of that change. All variants run interleaved (each
once per repeat), so the load of a shared machine hits them alike; medians of --repeats.

Outside the graph, each call is timed with perf_counter by wrapping the functions the Detector calls:
input checks + conversion (inputs.to_rgb), resize to S and normalisation (host_kernels.preprocess; the
Pillow path's per-channel resize timed apart from the normalisation), stacking the batch (Detector._infer
less the backend call), the backend call, the map's resize to the input size (detector.resize_map), the
Result objects (detector.decide less the resize), and Python overhead (the call's rest).
Inside the backend call, the stages come from the runtimes' own profilers on a profiled copy of the same
graph (OpenVINO PERF_COUNT: each executed node's real time, mapped to the exported graph's nodes through
its originalLayersNames; onnxruntime enable_profiling: each node's kernel time) and from perf_counter
around the C++ kernels between the split graphs; torch eager from forward hooks on the modules and wrappers
around the reference ops. A stage's share of the profiled time is applied to the unprofiled backend call.
Stages: backbone, embeddings (both patch embeddings and their token glue), mask: clustering transformer,
mask: adaptive mask (its distances and boundary), inpainting blocks (mask-token replacement, blocks, norm),
head (the transposed convolution), score map (distances, upsample, smoothing), image score, runtime glue
(the backend call outside its profiled nodes).

Compute floor: FLOPs per image per stage counted by torch.utils.flop_counter (matmuls and convolutions,
as bench/train_throughput.py), divided by this machine's peak measured in the same run (a large fp32
GEMM and an int8 GEMM, best of numpy, onnxruntime and OpenVINO); for a mixed path each stage at the
precision its graph runs it in (OpenVINO's executed precision / onnxruntime's quantised nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402
from runtime import ensure_bundle  # noqa: E402

from aminet_edge.runtime import Detector, host_kernels  # noqa: E402
from aminet_edge.runtime import detector as detector_module  # noqa: E402

OUTSIDE = ("input checks + conversion", "resize to S", "normalisation", "batch stacking")
GRAPH = ("backbone", "embeddings", "mask: clustering transformer", "mask: adaptive mask", "inpainting blocks",
         "head", "score map", "image score", "runtime glue")
AFTER = ("map resize to input size", "result objects", "Python overhead")
STAGES = OUTSIDE + GRAPH + AFTER
COMPUTE = GRAPH[:-1]  # the stages whose FLOPs are counted

PATHS = (  # (label, backend, options)
    ("torch eager", "torch", {"ops_backend": "reference"}),
    ("openvino fp32", "openvino", {"precision": "fp32"}),
    ("openvino int8 static", "openvino", {"precision": "int8"}),
    ("onnxruntime-split + C++ int8", "onnxruntime-split", {"precision": "int8"}),
    ("onnxruntime int8", "onnxruntime", {"precision": "int8"}),
)
BEFORE = " (host steps Pillow/numpy)"
# between variants: torch's OpenMP, onnxruntime's and OpenVINO's idle threads spin for a while after a call
# and would slow the next variant's preprocessing (up to 7x on a loaded 2-core machine), which a Detector
# running alone never meets
PAUSE_S = 0.1

# ---- graph node -> stage ----------------------------------------------------------------------------------
_MODULE = [(re.compile(p), s) for p, s in (
    (r"/extractor/", "backbone"), (r"/embed_(cluster|inpaint)/", "embeddings"),
    (r"/(aggregation\.\d+|cluster_norm)/", "mask: clustering transformer"), (r"/guide/", "mask: adaptive mask"),
    (r"/(blocks\.\d+|norm)/", "inpainting blocks"))]
# the stage of the plain ("/Op_N") nodes that follow a module's nodes in the exported graph's order
_AFTER_MODULE = {"backbone": "backbone", "embeddings": "embeddings",
                 "mask: clustering transformer": "mask: adaptive mask", "mask: adaptive mask": "mask: adaptive mask",
                 "inpainting blocks": "head"}


def module_stage(name: str) -> str | None:
    """The stage of a node named after one of the networks' modules (anywhere in the name: quantiser
    nodes are named after the tensor they quantise), else None."""
    for pattern, stage in _MODULE:
        if pattern.search(name):
            return stage
    return None


def graph_stages(path: Path) -> dict[str, str]:
    """{node name: stage} of an exported ONNX graph. Plain nodes take the stage after the last module node
    before them in graph order (the exporter's order is the forward's); after the head's ConvTranspose the
    score map begins, and its nodes that only the "score" output needs are the image score."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out: dict[str, str] = {}
    has_backbone = any(n.name.startswith("/extractor/") for n in graph.node)
    region = "backbone" if has_backbone else "embeddings"
    tail = "score map" if "amap" in {o.name for o in graph.output} else "head"  # model_b ends with the head
    for node in graph.node:
        stage = module_stage(node.name) if node.name.startswith("/") or "Quant" in node.op_type else None
        if stage is not None:
            region = _AFTER_MODULE[stage]
        elif node.op_type == "ConvTranspose":
            stage, region = "head", tail
        else:
            stage = region
        out[node.name] = stage
    producers = {o: n for n in graph.node for o in n.output}

    def ancestors(tensor: str) -> set[str]:
        seen: set[str] = set()
        todo = [tensor]
        while todo:
            node = producers.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    outputs = {o.name for o in graph.output}
    for name in outputs:  # OpenVINO names an output's producer after the output tensor
        if name in producers:
            out.setdefault(name, out[producers[name].name])
    if {"amap", "score"} <= outputs:
        for name in ancestors("score") - ancestors("amap"):
            if out.get(name) == "score map":
                out[name] = "image score"
    return out


def stage_of(names: list[str], stages: dict[str, str]) -> str:
    """The stage of a runtime node that ran the exported nodes `names` (or carries their names)."""
    for name in names:
        if name in stages:
            return stages[name]
    for name in names:
        stage = module_stage(name)
        if stage is not None:
            return stage
    for name in names:  # onnxruntime / OpenVINO suffixes: "/Gather_5/GatherSliceToSplitFusion", reorders
        for part in re.split(r"_(?=/)|/(?=[A-Z][A-Za-z]*Fusion)", name):
            if part in stages:
                return stages[part]
    return "runtime glue"


# ---- profilers --------------------------------------------------------------------------------------------
def ov_profile(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> tuple[dict[str, float], float]:
    """({stage: seconds per call}, wall seconds per call) of one graph on OpenVINO's CPU plugin, compiled as
    openvino_backend.compile_graph does (LATENCY, f32, the backend's threads) plus PERF_COUNT."""
    import openvino as ov

    stages = graph_stages(path)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": "f32"})
    origin = {op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str).split(",")
              for op in compiled.get_runtime_model().get_ops() if "originalLayersNames" in op.get_rt_info()}
    request = compiled.create_infer_request()
    request.infer(feeds)
    totals: dict[str, float] = defaultdict(float)
    wall = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(feeds)
        wall += time.perf_counter() - t0
        for info in request.get_profiling_info():
            names = [n for n in origin.get(info.node_name, []) if n] or [info.node_name]
            totals[stage_of(names, stages)] += info.real_time.total_seconds()
    return {k: v / runs for k, v in totals.items()}, wall / runs


def openvino_profile(backend: Any, images: np.ndarray, runs: int) -> dict[str, float]:
    """{stage: share of the call} of the openvino backends: each graph's PERF_COUNT profile, the C++
    kernels between the split graphs by perf_counter."""
    threads = backend.compiled[0].get_property("INFERENCE_NUM_THREADS")
    if not backend.split:
        return _shares(*ov_profile(backend.paths[0], {"images": images}, threads, runs))
    glue = backend.glue
    a = dict(zip(glue.a_outputs, backend._infer(0, {"images": images}, glue.a_outputs)))
    feeds_b = {"inpaint_tokens": a["inpaint_tokens"], "mask": glue.mask(a)}
    (recon,) = backend._infer(1, feeds_b, ("recon",))
    return split_shares(ov_profile(backend.paths[0], {"images": images}, threads, runs),
                        ov_profile(backend.paths[1], feeds_b, threads, runs),
                        _median_s(lambda: glue.mask(a), runs), _median_s(lambda: glue.score_map(a, recon), runs))


def split_shares(part_a: tuple[dict[str, float], float], part_b: tuple[dict[str, float], float],
                 mask_s: float, score_s: float) -> dict[str, float]:
    """{stage: share} of a split backend call from its two graphs' profiles ({stage: s}, wall s) and the
    seconds of its mask and score-map kernels."""
    totals: dict[str, float] = defaultdict(float)
    for seconds, wall in (part_a, part_b):
        for k, v in seconds.items():
            totals[k] += v
        totals["runtime glue"] += max(0.0, wall - sum(seconds.values()))
    totals["mask: adaptive mask"] += mask_s
    totals["score map"] += score_s
    return _shares(totals, sum(totals.values()))


def ort_profile(path: Path, feeds: dict[str, np.ndarray], threads: int | None, runs: int,
                one_by_one: bool) -> tuple[dict[str, float], float]:
    """({stage: seconds per call}, wall seconds per call) of one onnxruntime graph from its profiler."""
    import onnxruntime as ort

    stages = graph_stages(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = int(threads)
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        n = len(next(iter(feeds.values())))
        parts = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)] if one_by_one else [feeds]
        for part in parts:
            session.run(None, part)
        start = time.perf_counter()
        for _ in range(runs):
            for part in parts:
                session.run(None, part)
        wall = (time.perf_counter() - start) / runs
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[stage_of([event["name"][:-len("_kernel_time")]], stages)] += event["dur"] * 1e-6
    return {k: v / (runs + 1) for k, v in totals.items()}, wall  # the profile holds the warm-up call too


def _shares(totals: dict[str, float], wall: float) -> dict[str, float]:
    """Stage seconds -> shares of `wall`, the rest as runtime glue (never negative)."""
    node_sum = sum(totals.values())
    scale = min(1.0, wall / node_sum) if node_sum > 0 else 1.0
    shares = {k: v * scale / wall for k, v in totals.items()}
    shares["runtime glue"] = shares.get("runtime glue", 0.0) + max(0.0, 1.0 - sum(shares.values()))
    return shares


def onnxruntime_profile(backend: Any, images: np.ndarray, threads: int | None, runs: int) -> dict[str, float]:
    """{stage: share} of the onnxruntime backends: each graph's profile, the C++ kernels by perf_counter."""
    if backend.name == "onnxruntime":
        seconds, wall = ort_profile(backend.path, {"images": images}, threads, runs,
                                    backend.precision == "int8" and not backend.exact_batch)
        return _shares(seconds, wall)
    glue = backend.glue
    a = dict(zip(glue.a_outputs, backend.session_a.run(list(glue.a_outputs), {"images": images})))
    mask = glue.mask(a)
    feeds_b = {"inpaint_tokens": a["inpaint_tokens"], "mask": mask}
    (recon,) = backend.session_b.run(["recon"], feeds_b)
    return split_shares(ort_profile(backend.path_a, {"images": images}, threads, runs, False),
                        ort_profile(backend.path_b, feeds_b, threads, runs,
                                    backend.precision == "int8" and not backend.exact_batch),
                        _median_s(lambda: glue.mask(a), runs), _median_s(lambda: glue.score_map(a, recon), runs))


def _median_s(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def torch_stage_clock(backend: Any, clock: dict[str, float]) -> Iterator[None]:
    """Time the torch backend's stages into `clock` (seconds): forward hooks on the modules, wrappers on
    the reference ops and on inpaint_features (head = inpaint_features less blocks and norm)."""
    from aminet_edge.ops import reference

    pipeline = backend.pipeline
    aminet = pipeline.aminet
    handles = []
    starts: dict[int, float] = {}

    def hook(module: Any, stage: str) -> None:
        def pre(mod: Any, args: Any) -> None:
            starts[id(mod)] = time.perf_counter()

        def post(mod: Any, args: Any, out: Any) -> None:
            clock[stage] += time.perf_counter() - starts.pop(id(mod))

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    hook(pipeline.extractor, "backbone")
    hook(aminet.embed_cluster, "embeddings")
    hook(aminet.embed_inpaint, "embeddings")
    for block in aminet.aggregation:
        hook(block, "mask: clustering transformer")
    hook(aminet.cluster_norm, "mask: clustering transformer")
    for block in aminet.blocks:
        hook(block, "inpainting blocks")
    hook(aminet.norm, "inpainting blocks")

    def timed(fn: Callable[..., Any], stage: str, less: tuple[str, ...] = ()) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = sum(clock[s] for s in less)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            clock[stage] += time.perf_counter() - t0 - (sum(clock[s] for s in less) - before)
            return out
        return run

    saved = reference.adaptive_mask, reference.score_map, aminet.inpaint_features
    reference.adaptive_mask = timed(saved[0], "mask: adaptive mask")
    reference.score_map = timed(saved[1], "score map")
    aminet.inpaint_features = timed(saved[2], "head", ("inpainting blocks",))
    try:
        yield
    finally:
        reference.adaptive_mask, reference.score_map = saved[0], saved[1]
        del aminet.inpaint_features
        for h in handles:
            h.remove()


# ---- outside the graph ------------------------------------------------------------------------------------
@contextlib.contextmanager
def patched(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """owner.name = wrapper(owner.name) for the block."""
    original = getattr(owner, name)
    setattr(owner, name, wrapper(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def timed_predict(det: Detector, frames: list[np.ndarray], use_kernels: bool) -> dict[str, float]:
    """One `det.predict(frames)` with its steps timed: {stage or "backend call": ms per image}."""
    from aminet_edge.data import images as images_module

    clock: dict[str, float] = defaultdict(float)

    def timing(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                clock[stage] += time.perf_counter() - t0
                return out
            return run
        return wrap

    with contextlib.ExitStack() as stack:
        if not use_kernels:
            stack.enter_context(patched(host_kernels, "kernels", lambda _: (lambda: None)))
        stack.enter_context(patched(detector_module, "to_rgb", timing("input checks + conversion")))
        stack.enter_context(patched(host_kernels, "preprocess", timing("preprocess")))
        stack.enter_context(patched(images_module, "resize_plane", timing("resize to S")))
        stack.enter_context(patched(detector_module, "resize_map", timing("map resize to input size")))
        stack.enter_context(patched(detector_module, "decide", timing("decide")))
        stack.enter_context(patched(det, "_infer", timing("infer")))
        stack.enter_context(patched(det._backend, "run", timing("backend call")))
        t0 = time.perf_counter()
        det.predict(frames)
        total = time.perf_counter() - t0
    if use_kernels and host_kernels.kernels() is not None:
        clock["resize to S"] = clock["preprocess"]  # one C++ call resizes and normalises: both under resize
    out = {
        "input checks + conversion": clock["input checks + conversion"],
        "resize to S": clock["resize to S"],
        "normalisation": max(0.0, clock["preprocess"] - clock["resize to S"]),
        "batch stacking": clock["infer"] - clock["backend call"],
        "backend call": clock["backend call"],
        "map resize to input size": clock["map resize to input size"],
        "result objects": clock["decide"] - clock["map resize to input size"],
    }
    out["Python overhead"] = total - (clock["input checks + conversion"] + clock["preprocess"] + clock["infer"]
                                      + clock["decide"])
    out["total"] = total
    return {k: v * 1e3 / len(frames) for k, v in out.items()}


def host_steps(det: Detector, frame: np.ndarray, runs: int = 30) -> list[tuple[str, float, float]]:
    """[(step, Pillow/numpy ms, C++ kernel ms)]: the fastest of `runs` interleaved calls of each host step
    (the best run shows the step's own cost on a shared machine; both give the same bits)."""
    rgb = detector_module.to_rgb(frame)
    amap = np.random.default_rng(0).random((det.image_size,) * 2, dtype=np.float32)
    h, w = frame.shape[:2]
    steps = (("resize to S + normalisation", lambda: host_kernels.preprocess(rgb, det.image_size, det.config.mean,
                                                                             det.config.std)),
             ("map resize to input size", lambda: detector_module.resize_map(amap, h, w)))
    out = []
    for name, fn in steps:
        best = {True: np.inf, False: np.inf}
        for _ in range(runs):
            for kernels in (False, True):
                with contextlib.ExitStack() as stack:
                    if not kernels:
                        stack.enter_context(patched(host_kernels, "kernels", lambda _: (lambda: None)))
                    t0 = time.perf_counter()
                    fn()
                    best[kernels] = min(best[kernels], time.perf_counter() - t0)
        out.append((name, best[False] * 1e3, best[True] * 1e3))
    return out


# ---- compute floor ----------------------------------------------------------------------------------------
def stage_flops(bundle: Path) -> dict[str, float]:
    """FLOPs per image per compute stage at batch 1 (matmuls and convolutions), by torch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from aminet_edge.ops import reference

    det = Detector.load(bundle, backend="torch", ops_backend="reference", threshold=1.0, pixel_threshold=1.0)
    pipeline = det._backend.pipeline
    aminet = pipeline.aminet
    size = det.image_size
    out: dict[str, float] = {}

    def count(stage: str, fn: Callable[[], Any]) -> Any:
        with FlopCounterMode(display=False) as counter:
            result = fn()
        out[stage] = out.get(stage, 0.0) + counter.get_total_flops()
        return result

    with torch.inference_mode():
        images = torch.randn(1, 3, size, size)
        feat = count("backbone", lambda: pipeline.extractor(images))
        raw = count("embeddings", lambda: aminet._embed(aminet.embed_cluster, feat))
        tokens = raw + aminet.pos_embed
        x = torch.cat([aminet.cluster_tokens.expand(1, -1, -1), tokens], dim=1)

        def aggregate() -> Any:
            y = x
            for blk in aminet.aggregation:
                y = blk(y)
            return aminet.cluster_norm(y[:, :aminet.cfg.num_clusters])

        centers = count("mask: clustering transformer", aggregate)
        mask, _, _ = count("mask: adaptive mask",
                           lambda: reference.adaptive_mask(tokens, centers, aminet.cfg.mask_lambda))
        inp = count("embeddings", lambda: aminet.embed_inpaint_tokens(feat))
        count("inpainting blocks", lambda: aminet._inpaint_hidden(inp, mask, None, False))
        recon = count("head", lambda: aminet.inpaint_features(inp, mask))
        out["head"] -= out["inpainting blocks"]
        cfg = det.config.score
        count("score map", lambda: reference.score_map(feat, recon, (size, size), cfg.sigma, cfg.image_score))
    det.close()
    out["image score"] = 0.0
    return out


def peak_flops(threads: int | None, seconds: float = 1.5) -> dict[str, tuple[float, str]]:
    """{"fp32" / "int8": (best FLOP/s, which library)} of a 1024 x 2048 x 2048 GEMM on this machine: the
    fastest run of each library for ~`seconds`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 1024, 2048, 2048
    flops = 2.0 * m * k * n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    found: dict[str, tuple[float, str]] = {}

    def rate(label: str, precision: str, fn: Callable[[], object]) -> None:
        fn()
        runs = max(3, int(seconds / max(_median_s(fn, 1), 1e-4)))
        value = flops / min(_median_s(fn, 1) for _ in range(runs))  # the best run: a peak, load aside
        if value > found.get(precision, (0.0, ""))[0]:
            found[precision] = (value, label)

    rate("numpy", "fp32", lambda: a @ w)
    fp32 = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                             [numpy_helper.from_array(w, "w")])
    qw = rng.integers(-127, 128, (k, n), dtype=np.int8)
    int8 = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["qa"]),
         helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"]),
         helper.make_node("DequantizeLinear", ["qw", "sw", "zw"], ["dw"]),
         helper.make_node("MatMul", ["da", "dw"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(np.float32(0.05), "sa"), numpy_helper.from_array(np.uint8(128), "za"),
         numpy_helper.from_array(qw, "qw"), numpy_helper.from_array(np.float32(0.01), "sw"),
         numpy_helper.from_array(np.int8(0), "zw")])
    with tempfile.TemporaryDirectory() as tmp:
        for precision, graph in (("fp32", fp32), ("int8", int8)):
            path = Path(tmp) / f"{precision}.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
            with contextlib.suppress(ImportError):
                import onnxruntime as ort

                options = ort.SessionOptions()
                if threads:
                    options.intra_op_num_threads = int(threads)
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                rate("onnxruntime", precision, lambda: session.run(None, {"a": a}))
            with contextlib.suppress(ImportError):
                import openvino as ov

                config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
                if threads:
                    config["INFERENCE_NUM_THREADS"] = int(threads)
                compiled = ov.Core().compile_model(str(path), "CPU", config)
                request = compiled.create_infer_request()
                rate("openvino", precision, lambda: request.infer({"a": a}))
    return found


_HEAVY = {"Convolution", "FullyConnected", "MatMul", "Deconvolution", "FullyConnectedQuantizedLegacy",
          "FullyConnectedQuantized", "GroupConvolution"}


def int8_coverage(det: Detector) -> dict[str, tuple[int, int]]:
    """{stage: (int8 heavy nodes, heavy nodes)}: convolutions and matmuls of what the backend runs that run in
    int8 (OpenVINO: the executed precision; onnxruntime: quantised nodes of its graphs)."""
    backend = det._backend
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    if backend.name.startswith("openvino"):
        for path, compiled in zip(backend.paths, backend.compiled):
            stages = graph_stages(path)
            for op in compiled.get_runtime_model().get_ops():
                info = op.get_rt_info()
                if info["layerType"].astype(str) not in _HEAVY:
                    continue
                names = [n for n in info["originalLayersNames"].astype(str).split(",") if n] or [op.get_friendly_name()]
                stage = stage_of(names, stages)
                out[stage][1] += 1
                out[stage][0] += info["runtimePrecision"].astype(str) in ("i8", "u8")
    elif backend.name.startswith("onnxruntime"):
        import onnx

        paths = [backend.path] if backend.name == "onnxruntime" else [backend.path_a, backend.path_b]
        for path in paths:
            stages = graph_stages(path)
            for node in onnx.load(str(path), load_external_data=False).graph.node:
                if node.op_type in ("MatMul", "Conv", "ConvTranspose", "Gemm", "MatMulInteger", "ConvInteger",
                                    "QLinearMatMul", "QLinearConv"):
                    stage = stages.get(node.name, "runtime glue")
                    out[stage][1] += 1
                    out[stage][0] += node.op_type in ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv")
    return {k: (v[0], v[1]) for k, v in out.items()}


def floor_ms(flops: dict[str, float], peak: dict[str, tuple[float, str]],
             coverage: dict[str, tuple[int, int]]) -> float:
    """ms per image of the compute stages at the peak of the precision each runs in (int8 share by node count)."""
    total = 0.0
    for stage, f in flops.items():
        q, n = coverage.get(stage, (0, 0))
        share = q / n if n else 0.0
        total += f * (share / peak.get("int8", peak["fp32"])[0] + (1 - share) / peak["fp32"][0])
    return total * 1e3


# ---- the run ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile-runs", type=int, default=5, help="profiled calls per path and batch")
    parser.add_argument("--threads", type=int, default=None, help="threads per backend (default: all cores)")
    parser.add_argument("--size", type=int, default=512, help="input frame side in pixels")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--before-bundle", type=Path, default=None,
                        help="the same bundle exported by an earlier aminet-edge: its openvino paths run beside "
                             "(graphs before / after)")
    args = parser.parse_args()

    bundle = ensure_bundle(args.bundle, args.preset)
    load_start = os.getloadavg()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(max(args.batches))]
    options = {"threshold": 1.0, "pixel_threshold": 1.0}
    if args.threads:
        options["threads"] = args.threads

    auto = Detector.load(bundle, **options)
    auto_label = f"auto: {auto.backend} {auto.precision}"
    paths: list[tuple[str, Detector, bool]] = []
    for label, backend, extra in PATHS:
        paths.append((label, Detector.load(bundle, backend=backend, **extra, **options), True))
    default = next((label for (label, _, _), (_, name, extra) in zip(paths, PATHS)
                    if name == auto.backend and extra.get("precision", auto.precision) == auto.precision), None)
    if default is None:
        paths.append((auto_label, auto, True))
        default = auto_label
    else:
        auto.close()
    default_det = next(d for label, d, _ in paths if label == default)
    paths.append((default + BEFORE, default_det, False))
    base_of = {label: label.replace(BEFORE, "") for label, _, _ in paths}
    if args.before_bundle is not None:
        for label, backend, extra in PATHS:
            if backend == "openvino":
                old = f"{label} (graphs before)"
                paths.append((old, Detector.load(args.before_bundle, backend=backend, **extra, **options), True))
                base_of[old] = old  # its own graphs: profiled on their own

    samples: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for b in args.batches:
        batch = frames[:b]
        for label, det, kernels in paths:
            timed_predict(det, batch, kernels)  # warm-up
        for _ in range(args.repeats):
            for label, det, kernels in paths:
                time.sleep(PAUSE_S)  # the previous variant's spinning threads park, as beside a lone Detector
                samples[(label, b)].append(timed_predict(det, batch, kernels))
    load_timed = os.getloadavg()

    # graph-internal shares from the profilers
    shares: dict[tuple[str, int], dict[str, float]] = {}
    coverage: dict[str, dict[str, tuple[int, int]]] = {}
    for label, det, kernels in paths:
        if base_of.get(label, label) != label:
            continue
        backend = det._backend
        coverage[label] = int8_coverage(det)
        for b in args.batches:
            images = np.stack([host_kernels.preprocess(detector_module.to_rgb(f), det.image_size, det.config.mean,
                                                       det.config.std) for f in frames[:b]])
            if backend.name.startswith("openvino"):
                shares[(label, b)] = openvino_profile(backend, images, args.profile_runs)
            elif backend.name.startswith("onnxruntime"):
                shares[(label, b)] = onnxruntime_profile(backend, images, args.threads, args.profile_runs)
            elif backend.name == "torch":
                clock: dict[str, float] = defaultdict(float)
                backend.run(images)
                wall = 0.0
                with torch_stage_clock(backend, clock):
                    for _ in range(args.profile_runs):
                        t0 = time.perf_counter()
                        backend.run(images)
                        wall += time.perf_counter() - t0
                shares[(label, b)] = _shares(clock, wall)
    for label, det, _ in paths:
        if not label.endswith(BEFORE):
            det.close()

    host = host_steps(default_det, frames[0]) if host_kernels.kernels() is not None else []
    flops = stage_flops(bundle)
    peak = peak_flops(args.threads)
    load_end = os.getloadavg()

    # tables
    med: dict[tuple[str, int], dict[str, float]] = {}
    for key, runs in samples.items():
        med[key] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        sh = shares.get((base_of.get(key[0], key[0]), key[1]), {})
        for stage in GRAPH:
            med[key][stage] = med[key]["backend call"] * sh.get(stage, 0.0)
    labels = [label for label, _, _ in paths]
    lines = []
    for b in args.batches:
        lines.append(f"\n### batch {b}: ms per image (% of the call)\n")
        lines.append("| stage | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        for stage in STAGES:
            cells = []
            for label in labels:
                v, total = med[(label, b)].get(stage, 0.0), med[(label, b)]["total"]
                cells.append(f"{v:.2f} ({100 * v / total:.0f} %)")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("| **total (median of the whole call)** | "
                     + " | ".join(f"**{med[(label, b)]['total']:.1f}**" for label in labels) + " |")
    if host:
        lines.append("\n### host steps, one 512x512 frame: fastest of 30 interleaved calls\n")
        lines.append("| step | Pillow / numpy ms | C++ kernel ms | before / after |")
        lines.append("|---|---:|---:|---:|")
        lines += [f"| {name} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x |" for name, slow, fast in host]
    fp32_peak, int8_peak = peak["fp32"], peak.get("int8", peak["fp32"])
    total_flops = sum(flops.values())
    lines.append("\n### compute floor\n")
    lines.append(f"FLOPs per image (matmuls and convolutions, torch.utils.flop_counter): {total_flops / 1e9:.2f} G: "
                 + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in flops.items() if v) + ".")
    lines.append(f"Measured peak (1024x2048x2048 GEMM, {args.threads or os.cpu_count()} threads): fp32 "
                 f"{fp32_peak[0] / 1e9:.0f} GFLOP/s ({fp32_peak[1]}), int8 {int8_peak[0] / 1e9:.0f} GOP/s "
                 f"({int8_peak[1]}).\n")
    lines.append("| path | int8 coverage (int8 / all conv + matmul nodes per stage) | floor ms/image | "
                 + " | ".join(f"b{b} x of floor" for b in args.batches) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(args.batches))
    floors = {}
    for label in labels:
        cov = coverage.get(base_of.get(label, label), {})
        floors[label] = floor_ms(flops, peak, cov)
        covered = ", ".join(f"{k} {q}/{n}" for k, (q, n) in sorted(cov.items()) if q) or "none (fp32)"
        lines.append(f"| {label} | {covered} | {floors[label]:.1f} | "
                     + " | ".join(f"{med[(label, b)]['total'] / floors[label]:.1f}x" for b in args.batches) + " |")
    eager, ort8 = "torch eager", "onnxruntime int8"
    lines.append(f"\n### goals (default path: `Detector.load(backend=\"auto\")` picks {auto_label.split(': ')[1]})\n")
    befores = [label for label in labels if label.endswith("(graphs before)")]
    afters = [label.replace(" (graphs before)", "") for label in befores]
    lines.append("| batch | default ms/image | vs torch eager (goal >= 4x) | vs onnxruntime int8 (goal >= 1.5x) | "
                 "x of its floor (goal <= 3x) | host kernels: before / after | "
                 + "".join(f"{label}: before / after | " for label in befores))
    lines.append("|---|---:|---:|---:|---:|---:|" + "---:|" * len(befores))
    for b in args.batches:
        d = med[(default, b)]["total"]
        lines.append(f"| {b} | {d:.1f} | {med[(eager, b)]['total'] / d:.2f}x | {med[(ort8, b)]['total'] / d:.2f}x | "
                     f"{d / floors[default]:.1f}x | {med[(default + BEFORE, b)]['total'] / d:.2f}x | "
                     + "".join(f"{med[(label, b)]['total'] / med[(after, b)]['total']:.2f}x | "
                               for label, after in zip(befores, afters)))
    note = (f"\npreset {args.preset}, {args.size}x{args.size} uint8 frames, bundle {bundle.name}, median of "
            f"{args.repeats} interleaved repeats per path; graph stages: the call's backend time split by "
            f"{args.profile_runs} profiled calls; load average (1 min) {load_start[0]:.1f} at the start, "
            f"{load_timed[0]:.1f} after the timing, {load_end[0]:.1f} at the end; "
            f"{os.cpu_count()} CPUs.\n")
    append_result("stages", "\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    main()
