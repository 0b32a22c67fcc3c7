"""Build TensorRT / TensorRT-RTX engines from a bundle's exported ONNX graphs, and check them before use.

Build: ONNX -> parser -> builder config (strongly typed network, dynamic batch profile, workspace,
compute capabilities) -> serialized engine at `bundle/engines/<backend>-<target>-<precision>.engine`
(split halves: `...-<precision>-model_a.engine` / `-model_b.engine`), recorded with its sha256 in
config.json "artifacts"["engines"] (aminet_edge.bundle owns the layout, the records and their checks).
Running engines is aminet_edge/runtime's job; it calls `check_compatible` (this machine's TensorRT and
GPU against the record) and aminet_edge.bundle.verify_record (the checksum) first.

Backends (API differences in trt_compat.py):
- "tensorrt_rtx" (target "rtx"): ahead of time for chosen compute capabilities; needs no GPU.
- "tensorrt" (TRT 10.x; target "jetson" on JetPack 6.1+, built on the Jetson itself, or "gpu" — what
  "auto" resolves to on a desktop/datacenter GPU): builds for the GPU present, so it needs one.

What has run where: the TensorRT-RTX build (parse, configure, serialize for SM 80-120, fp32 and fp16
graphs, dynamic batch) runs in CI on a CPU-only machine. No engine has been deserialized or executed
by this project's tests, and the standard `tensorrt` path has only been type-checked with mypy
against tensorrt-stubs 10.13 (tests/test_engine.py), never run: it needs the TensorRT libraries and a GPU.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aminet_edge.bundle import (ENGINE_DIR, GRAPHS, BundleConfig, BundleError, artifact_path, engine_name, engine_record,
                                engine_records, graph_computes, graph_file, has_graph, install_artifacts, make_record,
                                read_config, relative_path, verify_record)
from aminet_edge.config import uses_guide_map
from aminet_edge.export import trt_compat
from aminet_edge.export.graph_io import guided
from aminet_edge.export.trt_compat import BackendNotInstalledError
from aminet_edge.files import write_temp

if TYPE_CHECKING:  # the standard path is type-checked against tensorrt-stubs (tests/test_engine.py)
    import tensorrt as trt

TARGETS = ("rtx", "jetson", "auto")
DEFAULT_RTX_SMS = (80, 86, 89, 120)
_OOM_WORDS = ("out of memory", "insufficient memory", "cudaerrormemoryallocation", "workspace")

__all__ = ["BackendNotInstalledError", "EngineBuildError", "EngineMismatchError", "GpuRequiredError",
           "OnnxParseError", "UnsupportedTargetError", "WorkspaceError", "build_engine", "check_compatible",
           "check_engine", "engine_name", "rebuild_hint", "serialize_onnx"]


class EngineBuildError(RuntimeError):
    """An engine could not be built; subclasses say why."""


class GpuRequiredError(EngineBuildError):
    """Standard TensorRT builds for the GPU present, and there is none (TensorRT-RTX AOT needs none)."""


class UnsupportedTargetError(EngineBuildError, ValueError):
    """Unknown target, a compute capability the backend cannot build for, or the wrong machine for it."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected node(s); the message names them."""


class WorkspaceError(EngineBuildError):
    """The builder ran out of memory within the workspace limit."""


class EngineMismatchError(RuntimeError):
    """An engine file does not match its record or this machine (checksum, runtime version, GPU)."""


def _resolve_target(target: str) -> tuple[str, str]:
    """(backend module name, resolved target) for target "rtx", "jetson" or "auto".

    "auto" looks at the machine: a Jetson -> tensorrt "jetson"; a GPU TensorRT-RTX targets (RTX_SM) ->
    tensorrt_rtx when installed, else tensorrt "gpu"; a GPU it does not target (datacenter Hopper SM 90,
    Blackwell SM 100, Turing) -> tensorrt "gpu", refused with what to do when only tensorrt_rtx is
    installed (its engine would not run here); no GPU -> tensorrt_rtx (ahead of time). "rtx" on a machine
    whose GPU it does not target warns that the engine is for other machines.
    """
    if target not in TARGETS:
        raise UnsupportedTargetError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "jetson":
        return "tensorrt", "jetson"
    present = trt_compat.gpus()
    foreign = [(name, sm) for name, sm in present if sm not in trt_compat.RTX_SM]
    if target == "rtx":
        if foreign:
            warnings.warn(f"--target rtx: TensorRT-RTX does not target this machine's {_describe(foreign)}; the "
                          f"engine is for RTX deployment GPUs (SM {', '.join(map(str, trt_compat.RTX_SM))}) and "
                          f"will not run here", UserWarning, stacklevel=3)
        return "tensorrt_rtx", "rtx"
    rtx, std = trt_compat.is_installed("tensorrt_rtx"), trt_compat.is_installed("tensorrt")
    if trt_compat.is_jetson():
        if std:
            return "tensorrt", "jetson"
        raise BackendNotInstalledError(f"--target auto on a Jetson builds with JetPack's TensorRT, which is not "
                                       f"importable: {trt_compat.INSTALL_HINT['tensorrt']}")
    if rtx and not foreign:  # no GPU (ahead of time) or only GPUs TensorRT-RTX targets
        return "tensorrt_rtx", "rtx"
    if std:
        return "tensorrt", "gpu"
    if rtx:
        raise UnsupportedTargetError(
            f"--target auto: this machine's {_describe(foreign)} is not a TensorRT-RTX target (it builds for SM "
            f"{', '.join(map(str, trt_compat.RTX_SM))}: RTX and workstation GPUs, not datacenter Hopper/Blackwell "
            f"or Turing), so an engine built here with tensorrt_rtx would not run on it. To run on this GPU, "
            f"install NVIDIA's standard TensorRT ({trt_compat.INSTALL_HINT['tensorrt']}) and re-run with "
            f"--target auto, or skip engines and use the torch backend (Detector.load(run, backend='torch', "
            f"device='cuda')). To build for RTX deployment machines on purpose, pass --target rtx [--arch ...].")
    raise BackendNotInstalledError("no TensorRT flavour installed: " + "; or ".join(
        f"{k}: {v}" for k, v in trt_compat.INSTALL_HINT.items()))


def _describe(gpus: list[tuple[str, int]]) -> str:
    return ", ".join(f"GPU {name} (SM {sm})" for name, sm in gpus)


def _compute_capabilities(backend: str, target: str, requested: list[int] | tuple[int, ...] | None) -> list[int]:
    """Validated SM list (major*10+minor). RTX: default DEFAULT_RTX_SMS. Standard TRT: the GPU present."""
    if backend == "tensorrt_rtx":
        # by default also the GPU present when TensorRT-RTX targets it (SM 121 is not in the default list)
        here = {sm for _, sm in trt_compat.gpus() if sm in trt_compat.RTX_SM}
        sms = sorted(set(requested) if requested else set(DEFAULT_RTX_SMS) | here)
        if 75 in sms:
            raise UnsupportedTargetError("compute capability 75 (Turing) is not supported: AMI-Net's GEMM "
                                         "layers have no TensorRT-RTX tactics there; target 80, 86, 89 or 120")
        bad = [s for s in sms if s not in trt_compat.RTX_SM]
        if bad:
            raise UnsupportedTargetError(f"TensorRT-RTX cannot build for compute capability {bad}; "
                                         f"supported: {sorted(trt_compat.RTX_SM)}")
        return sms
    present = trt_compat.gpus()
    if not present:
        raise GpuRequiredError("standard TensorRT builds an engine for the GPU it runs on and no CUDA GPU was "
                               "found; build on the target device (a Jetson engine on the Jetson) or use "
                               "--target rtx (TensorRT-RTX builds ahead of time without a GPU)")
    if target == "jetson" and not trt_compat.is_jetson():
        raise UnsupportedTargetError(f"target jetson: this is not a Jetson ({trt_compat.TEGRA_RELEASE} not "
                                     "found); Jetson engines are built on the Jetson itself. For this GPU use "
                                     "--target auto")
    sms = sorted({sm for _, sm in present})
    if requested and set(requested) != set(sms):
        raise UnsupportedTargetError(f"standard TensorRT builds for the GPU present (SM {sms}), not {list(requested)}")
    return sms


def serialize_onnx(onnx_path: str | Path, backend: str = "tensorrt_rtx", precision: str = "fp32",
                   batch: tuple[int, int, int] = (1, 1, 8), workspace: int | None = None,
                   compute_capabilities: list[int] | tuple[int, ...] | None = None,
                   hardware_compatible: bool = False, model: bytes | None = None) -> bytes:
    """ONNX file -> serialized engine bytes with `backend` ("tensorrt_rtx" or "tensorrt").
    model: the graph's serialized bytes to parse in place of the file's (a guided graph with its bank
    baked in: guide_bank.bake_guide); `onnx_path` then only names it in messages.

    Every graph input gets the batch profile (min, opt, max) on axis 0; its other axes must be static.
    compute_capabilities: TensorRT-RTX targets (validated by the caller; default DEFAULT_RTX_SMS).
    Raises OnnxParseError (names the rejected nodes), WorkspaceError, EngineBuildError.
    """
    trtm = trt_compat.load_backend(backend)
    onnx_path = Path(onnx_path)
    logger = trt_compat.make_logger(trtm)
    strongly_typed = trt_compat.supports_strong_typing(trtm)
    builder: trt.Builder = trtm.Builder(logger)
    network: trt.INetworkDefinition = builder.create_network(trt_compat.network_flags(trtm, strongly_typed))
    parser: trt.OnnxParser = trtm.OnnxParser(network, logger)
    if not (parser.parse_from_file(str(onnx_path)) if model is None else parser.parse(model, str(onnx_path))):
        raise OnnxParseError(f"{onnx_path}: {trtm.__name__} {trtm.__version__}'s ONNX parser rejected the graph:\n  "
                             + "\n  ".join(trt_compat.parser_errors(parser)))
    config: trt.IBuilderConfig = builder.create_builder_config()
    trt_compat.set_precision(trtm, config, precision, strongly_typed)
    trt_compat.set_workspace(trtm, config, workspace)
    if trt_compat.is_rtx(trtm):
        trt_compat.set_compute_capabilities(trtm, config, list(compute_capabilities or DEFAULT_RTX_SMS))
    else:
        trt_compat.set_hardware_compatibility(trtm, config, hardware_compatible)
    profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor: trt.ITensor = network.get_input(i)
        rest = [tensor.shape[j] for j in range(1, len(tensor.shape))]
        if any(d < 0 for d in rest):
            raise EngineBuildError(f"{onnx_path}: input {tensor.name!r} has dynamic axes besides the batch "
                                   f"({[tensor.shape[j] for j in range(len(tensor.shape))]}); re-export the bundle "
                                   "with aminet-edge export")
        low, opt, high = (trtm.Dims([b, *rest]) for b in batch)
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        text = "\n  ".join(logger.messages[-10:])
        if any(k in text.lower() for k in _OOM_WORDS):
            raise WorkspaceError(f"{onnx_path}: the builder ran out of memory (workspace limit {workspace} bytes); "
                                 f"raise --workspace-mb or lower the max batch {batch[2]}:\n  {text}")
        raise EngineBuildError(f"{onnx_path}: {trtm.__name__} failed to build the engine:\n  {text}")
    return bytes(serialized)


def baked_graph(bundle: Path, config: BundleConfig, graph: str, onnx_path: Path) -> bytes | None:
    """What an engine of a guided bundle's `graph` ("model", "model_a") is built from: the graph at
    `onnx_path` with the guide's bank baked in (guide_bank.bake_guide; engines hold it, so nothing feeds it
    at run time), serialized; None where the file is built as it is (model_b, the adaptive mask)."""
    if not guided(config.model.mask) or graph == "model_b":
        return None
    import onnx

    from aminet_edge.export.guide_bank import bake_guide, read_guide

    return bake_guide(onnx.load(str(onnx_path)), read_guide(bundle, config),  # type: ignore[no-any-return]
                      uses_guide_map(config.score.map)).SerializeToString()


def build_engine(bundle: str | Path, target: str = "auto", precision: str = "fp16",
                 batch: tuple[int, int, int] = (1, 1, 8), workspace: int | None = None,
                 compute_capabilities: list[int] | tuple[int, ...] | None = None, out: str | Path | None = None,
                 graph: str = "model", hardware_compatible: bool = False) -> Path:
    """Build an engine from one of the bundle's graphs (exported on demand when missing) and record it.

    target: "rtx" (tensorrt_rtx, no GPU needed), "jetson" (tensorrt, on the Jetson) or "auto" (RTX when
    installed, else tensorrt for the GPU present: "jetson" on a Jetson, "gpu" elsewhere).
    precision: "fp32" or "fp16": the graph model.onnx or model_fp16.onnx, whose casts set the precision
    (strongly typed network, no FP16 builder flag). fp32 builds also disable TF32.
    batch: (min, opt, max) of the dynamic batch profile. workspace: builder workspace limit in bytes
    (None: TensorRT's default, the device memory).
    compute_capabilities: TensorRT-RTX AOT targets as SM numbers (default 80, 86, 89, 120; 75 rejected);
    standard TensorRT accepts only the GPU present.
    out: engine path inside the bundle, default bundle/engines/engine_name(backend, target, precision, graph);
    a file there must be an engine the bundle records (BundleError: nothing else is overwritten).
    graph: "model" (single graph) or "model_a" / "model_b" (the split halves; build both).
    hardware_compatible: standard TensorRT on a dGPU only, AMPERE_PLUS compatibility level.
    Returns the engine path. Its record (path, backend, builder version, target, precision, graph, compute
    capabilities, GPU, input size, batch profile, sha256, the weights' sha256, build seconds) replaces any
    record of the same path in config.json "artifacts"["engines"].
    Raises BackendNotInstalledError, GpuRequiredError, UnsupportedTargetError, OnnxParseError,
    WorkspaceError, EngineBuildError; ValueError for bad arguments; BundleError for a damaged bundle or
    an `out` outside it.
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
    if len(batch) != 3 or not (1 <= batch[0] <= batch[1] <= batch[2]):
        raise ValueError(f"batch profile must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(batch)}")
    if workspace is not None and workspace <= 0:
        raise ValueError(f"workspace must be a positive number of bytes, got {workspace}")
    bundle = Path(bundle)
    backend, resolved = _resolve_target(target)
    trtm = trt_compat.load_backend(backend)
    sms = _compute_capabilities(backend, resolved, compute_capabilities)
    if hardware_compatible and (backend != "tensorrt" or resolved == "jetson"):
        raise UnsupportedTargetError("hardware_compatible (AMPERE_PLUS) is for standard TensorRT on a desktop or "
                                     "datacenter GPU; Jetson engines are device-specific and TensorRT-RTX uses "
                                     "compute capabilities instead")
    path = Path(out) if out is not None else bundle / ENGINE_DIR / engine_name(backend, resolved, precision, graph)
    rel = relative_path(bundle, path)  # refuses an engine outside the bundle before the build
    if os.path.lexists(path) and rel not in {r["path"] for r in engine_records(bundle, read_config(bundle))}:
        raise BundleError(f"{path} exists and is not an engine {bundle} records (its weights, a graph, config.json "
                          "or another file): it is never overwritten; choose another --out")
    if not has_graph(read_config(bundle), graph, precision):
        from aminet_edge.export.onnx_export import export_onnx

        export_onnx(bundle, precision, split=graph != "model")
    config = read_config(bundle)
    onnx_path = graph_file(bundle, config, graph, precision)  # checksum verified: never build from a changed graph
    baked = baked_graph(bundle, config, graph, onnx_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = serialize_onnx(onnx_path, backend, precision, (batch[0], batch[1], batch[2]), workspace, sms,
                          hardware_compatible, baked)
    seconds = time.perf_counter() - start
    present = trt_compat.gpus()
    made = config  # what the engine was built from (its graph verified against these weights above)

    def record(now: BundleConfig) -> None:
        rec = make_record(
            bundle, path, backend=backend, builder=trtm.__name__, builder_version=trtm.__version__, target=resolved,
            precision=precision, graph=graph, onnx=onnx_path.name, compute_capabilities=sms,
            gpu=present[0][0] if present and backend == "tensorrt" else None,
            strongly_typed=trt_compat.supports_strong_typing(trtm), hardware_compatible=hardware_compatible,
            input_size=made.model.image_size, **graph_computes(made), batch=list(batch), workspace=workspace,
            weights_sha256=made.artifacts["weights"]["sha256"], build_seconds=round(seconds, 2))
        now.artifacts["engines"] = [e for e in now.artifacts.get("engines", []) if e["path"] != rel] + [rec]

    install_artifacts(bundle, {write_temp(path, lambda tmp: tmp.write_bytes(data)): path}, record, made)
    return path


def rebuild_hint(bundle: Path, record: dict[str, Any] | None) -> str:
    """The build-engine command that rebuilds the engine of `record` (any engine when None)."""
    if record is None:
        return f"rebuild it with `aminet-edge build-engine {bundle}`"
    split = " --split" if record.get("graph", "model") != "model" else ""
    target = record["target"] if record["target"] in ("rtx", "jetson") else "auto"
    return f"rebuild it with `aminet-edge build-engine {bundle} --target {target} --precision {record['precision']}{split}`"


def check_compatible(bundle: str | Path, record: dict[str, Any]) -> None:
    """Whether the engine of `record` can run here: its runtime installed in the version that built it,
    and (where a GPU is visible) built for this GPU. Cheap: the file is not read.

    EngineMismatchError says what differs and the command that rebuilds it; BackendNotInstalledError
    when its runtime is absent. The GPU check compares the compute capability and, for standard
    TensorRT, the GPU name, unless the engine is hardware-compatible (AMPERE_PLUS) and the GPU SM >= 80.
    """
    bundle = Path(bundle)
    full, how = artifact_path(bundle, record["path"]), rebuild_hint(bundle, record)
    trtm = trt_compat.load_backend(record["backend"])
    if trtm.__version__ != record["builder_version"]:
        raise EngineMismatchError(f"{full} was built with {record.get('builder', record['backend'])} "
                                  f"{record['builder_version']}, installed is {trtm.__version__}; engines only load "
                                  f"in the version that built them; {how}")
    present = trt_compat.gpus()
    if present:
        name, sm = present[0]
        portable = bool(record.get("hardware_compatible")) and sm >= 80  # AMPERE_PLUS runs on any SM >= 80
        if sm not in record["compute_capabilities"] and not portable:
            raise EngineMismatchError(f"{full} was built for compute capabilities {record['compute_capabilities']}, "
                                      f"this GPU ({name}) is SM {sm}; {how}")
        if record["backend"] == "tensorrt" and record.get("gpu") and record["gpu"] != name and not portable:
            raise EngineMismatchError(f"{full} was built on {record['gpu']}, this GPU is {name}; {how}")


def check_engine(bundle: str | Path, path: str | Path) -> dict[str, Any]:
    """The engine's record, after checking that config.json records it, its size and sha256, that it
    was built from the current weights, and `check_compatible`.

    path: the engine file, absolute or relative to the bundle. EngineMismatchError says what differs and
    the command that rebuilds it; BackendNotInstalledError when its runtime is absent.
    """
    bundle = Path(bundle)
    config = read_config(bundle)
    record = None
    try:
        record = engine_record(bundle, config, path)
        verify_record(bundle, config, record, "engine", rebuild_hint(bundle, record))
    except BundleError as exc:
        raise EngineMismatchError(str(exc) if record is not None else f"{exc}; {rebuild_hint(bundle, None)}") from exc
    check_compatible(bundle, record)
    return dict(record)
