"""Build TensorRT / TensorRT-RTX engines from a bundle's exported ONNX graph, and check them before use.

Build: ONNX -> parser -> builder config (strongly typed network, dynamic batch profile, workspace,
compute capabilities) -> serialized engine at `bundle/engines/<backend>-<target>-<precision>.engine`,
recorded in config.json "artifacts"["engines"]. Running engines is aminet_edge/runtime's job.

Backends:
- "tensorrt_rtx" (target "rtx"): ahead-of-time for chosen compute capabilities; needs no GPU.
- "tensorrt" (TRT 10.x; target "jetson" on JetPack 6, built on the Jetson itself, or "gpu" for a
  datacenter/desktop GPU): builds for the GPU present, so it needs one.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aminet_edge.bundle import read_config, write_config
from aminet_edge.export import onnx_name, trt_compat
from aminet_edge.export.trt_compat import BackendNotInstalledError

if TYPE_CHECKING:  # the standard path is type-checked against tensorrt-stubs (tests/test_engine.py)
    import tensorrt as trt

ENGINE_DIR = "engines"
TARGETS = ("rtx", "jetson", "auto")
DEFAULT_RTX_SMS = (80, 86, 89, 120)

__all__ = ["BackendNotInstalledError", "EngineBuildError", "EngineMismatchError", "GpuRequiredError",
           "OnnxParseError", "UnsupportedTargetError", "WorkspaceError", "build_engine", "check_engine"]


class EngineBuildError(RuntimeError):
    """An engine could not be built; subclasses say why."""


class GpuRequiredError(EngineBuildError):
    """Standard TensorRT builds for the GPU present, and there is none (TensorRT-RTX AOT needs none)."""


class UnsupportedTargetError(EngineBuildError, ValueError):
    """Unknown target, or a compute capability the backend cannot build for."""


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected node(s); the message names them."""


class WorkspaceError(EngineBuildError):
    """The builder ran out of memory within the workspace limit."""


class EngineMismatchError(RuntimeError):
    """An engine file does not match its record or this machine (checksum, runtime version, GPU)."""


def _resolve_target(target: str) -> tuple[str, str]:
    """(backend module name, resolved target) for target "rtx", "jetson" or "auto"."""
    if target not in TARGETS:
        raise UnsupportedTargetError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "rtx":
        return "tensorrt_rtx", "rtx"
    if target == "jetson":
        return "tensorrt", "jetson"
    if trt_compat.is_installed("tensorrt_rtx"):
        return "tensorrt_rtx", "rtx"
    if trt_compat.is_installed("tensorrt"):
        return "tensorrt", "jetson" if Path("/etc/nv_tegra_release").exists() else "gpu"
    raise BackendNotInstalledError("no TensorRT flavour installed: " + "; or ".join(
        f"{k}: {v}" for k, v in trt_compat.INSTALL_HINT.items()))


def _compute_capabilities(backend: str, requested: list[int] | tuple[int, ...] | None) -> list[int]:
    """Validated SM list (major*10+minor). RTX: default DEFAULT_RTX_SMS. Standard TRT: the GPU present."""
    if backend == "tensorrt_rtx":
        sms = sorted(set(requested or DEFAULT_RTX_SMS))
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
    sms = sorted({sm for _, sm in present})
    if requested and set(requested) != set(sms):
        raise UnsupportedTargetError(f"standard TensorRT builds for the GPU present (SM {sms}), not {list(requested)}")
    return sms


def _build_serialized(trtm: Any, onnx_path: Path, precision: str, batch: tuple[int, int, int], size: int,
                      workspace_mb: int | None, sms: list[int], hardware_compatible: bool) -> bytes:
    """ONNX file -> serialized engine bytes with module `trtm` (tensorrt or tensorrt_rtx)."""
    logger = trt_compat.make_logger(trtm)
    builder: trt.Builder = trtm.Builder(logger)
    network: trt.INetworkDefinition = builder.create_network(trt_compat.network_flags(trtm, strongly_typed=True))
    parser: trt.OnnxParser = trtm.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise OnnxParseError(f"{onnx_path}: TensorRT ({trtm.__name__} {trtm.__version__}) rejected the graph:\n  "
                             + "\n  ".join(trt_compat.parser_errors(parser)))
    config: trt.IBuilderConfig = builder.create_builder_config()
    trt_compat.set_precision(trtm, config, precision, strongly_typed=True)
    trt_compat.set_workspace(trtm, config, workspace_mb)
    if trt_compat.is_rtx(trtm):
        trt_compat.set_compute_capabilities(trtm, config, sms)
    else:
        trt_compat.set_hardware_compatibility(trtm, config, hardware_compatible)
    profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor: trt.ITensor = network.get_input(i)
        rest = [tensor.shape[j] for j in range(1, len(tensor.shape))]
        if any(d < 0 for d in rest):  # only the batch axis is dynamic in our graphs; images as a fallback
            rest = [3, size, size]
        low, opt, high = (trtm.Dims([b, *rest]) for b in batch)
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        text = "\n  ".join(logger.messages[-10:])
        if any(k in text.lower() for k in ("out of memory", "insufficient memory", "workspace", "cudaerrormemory")):
            raise WorkspaceError(f"{onnx_path}: the builder ran out of memory (workspace {workspace_mb} MB); raise "
                                 f"--workspace-mb or lower the max batch {batch[2]}:\n  {text}")
        raise EngineBuildError(f"{onnx_path}: {trtm.__name__} failed to build the engine:\n  {text}")
    return bytes(serialized)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_engine(bundle: str | Path, target: str = "auto", precision: str = "fp16",
                 batch: tuple[int, int, int] = (1, 1, 8), workspace: int | None = None,
                 compute_capabilities: list[int] | tuple[int, ...] | None = None, out: str | Path | None = None,
                 hardware_compatible: bool = False) -> Path:
    """Build an engine from the bundle's single graph (model.onnx / model_fp16.onnx, exported on demand).

    target: "rtx" (tensorrt_rtx), "jetson" (tensorrt on the device) or "auto" (RTX when installed).
    precision: "fp32" or "fp16" (the fp16 graph's own casts; no FP16 builder flag, network strongly typed).
    batch: (min, opt, max) of the dynamic batch profile. workspace: MB limit, None = TensorRT's default.
    compute_capabilities: TensorRT-RTX AOT targets as SM numbers (default 80, 86, 89, 120; 75 rejected).
    out: engine path, default bundle/engines/<backend>-<target>-<precision>.engine.
    hardware_compatible: standard TRT on a dGPU only, AMPERE_PLUS compatibility level.
    Returns the engine path; its record (builder version, SMs, precision, input size, batch, sha256) goes
    into config.json "artifacts"["engines"].
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    if not (1 <= batch[0] <= batch[1] <= batch[2]):
        raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}")
    bundle = Path(bundle)
    backend, resolved = _resolve_target(target)
    trtm = trt_compat.load_backend(backend)
    sms = _compute_capabilities(backend, compute_capabilities)
    config = read_config(bundle)
    onnx_path = bundle / onnx_name("model", precision)
    if not onnx_path.is_file():
        from aminet_edge.export.onnx_export import export_onnx

        export_onnx(bundle, precision, split=False)
    size = config.model.image_size
    path = Path(out) if out is not None else bundle / ENGINE_DIR / f"{backend}-{resolved}-{precision}.engine"
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path.write_bytes(_build_serialized(trtm, onnx_path, precision, tuple(batch), size, workspace, sms,  # type: ignore[arg-type]
                                       hardware_compatible))
    seconds = time.perf_counter() - start
    present = trt_compat.gpus()
    try:
        rel = str(path.resolve().relative_to(bundle.resolve()))
    except ValueError:
        rel = str(path.resolve())
    record = {"path": rel, "backend": backend, "builder": trtm.__name__, "builder_version": trtm.__version__,
              "target": resolved, "precision": precision, "graph": "model", "onnx": onnx_path.name,
              "compute_capabilities": sms, "gpu": present[0][0] if present and backend == "tensorrt" else None,
              "input_size": size, "batch": list(batch), "workspace_mb": workspace,
              "bytes": path.stat().st_size, "sha256": sha256(path), "build_seconds": round(seconds, 2)}
    config = read_config(bundle)
    engines = [e for e in config.artifacts.get("engines", []) if e.get("path") != rel]
    config.artifacts["engines"] = engines + [record]
    write_config(bundle, config)
    return path


def check_engine(bundle: str | Path, path: str | Path) -> dict[str, Any]:
    """The engine's record, after checking file checksum, installed runtime version and GPU against it.

    EngineMismatchError says what differs and how to rebuild; BackendNotInstalledError when its runtime
    is absent. The GPU check runs only where a GPU is visible.
    """
    bundle, path = Path(bundle), Path(path)
    full = path if path.is_absolute() else bundle / path
    records = read_config(bundle).artifacts.get("engines", [])
    record = next((r for r in records if (bundle / r["path"]).resolve() == full.resolve()), None)
    rebuild = "rebuild it with `aminet-edge build-engine {b} --target {t} --precision {p}`"
    if record is None:
        raise EngineMismatchError(f"{full} is not recorded in {bundle}/config.json; "
                                  + rebuild.format(b=bundle, t="auto", p="fp16"))
    how = rebuild.format(b=bundle, t=record["target"] if record["target"] != "gpu" else "auto",
                         p=record["precision"])
    if not full.is_file():
        raise EngineMismatchError(f"{full} is missing; {how}")
    if sha256(full) != record["sha256"]:
        raise EngineMismatchError(f"{full}: sha256 differs from the one recorded at build time (file changed "
                                  f"or corrupt); {how}")
    trtm = trt_compat.load_backend(record["backend"])
    if trtm.__version__ != record["builder_version"]:
        raise EngineMismatchError(f"{full} was built with {record['builder']} {record['builder_version']}, installed is "
                                  f"{trtm.__version__}; engines only load in the version that built them; {how}")
    present = trt_compat.gpus()
    if present:
        name, sm = present[0]
        if sm not in record["compute_capabilities"]:
            raise EngineMismatchError(f"{full} was built for compute capabilities {record['compute_capabilities']}, "
                                      f"this GPU ({name}) is SM {sm}; {how}")
        if record["backend"] == "tensorrt" and record.get("gpu") and record["gpu"] != name:
            raise EngineMismatchError(f"{full} was built on {record['gpu']}, this GPU is {name}; {how}")
    return dict(record)
