"""What `aminet-edge info [RUN] [--verify]` prints: versions, op backends, inference backends, GPU, and a
bundle's graphs, engines and automatic backend choice (on CPU the table `auto` measured here, read from the
bundle's cache: info itself times nothing); with verify, every recorded file's checksum."""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Any

from aminet_edge.bundle import BundleConfig, read_config, verify_bundle


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not available ({type(exc).__name__}: {exc})".splitlines()[0][:120]
    if getattr(mod, "__file__", None) is None:  # an empty namespace folder, e.g. left by tensorrt-stubs
        return "not available (empty namespace package, no library)"
    return str(getattr(mod, "__version__", "installed"))


def mask_info(config: BundleConfig) -> str:
    """The test-time mask, one line: the paper's adaptive mask with its lambda, or the nearest-normal guide
    with its bank size, threshold and the bank's size in the weights file, its one copy in the bundle (from
    config.json's train.guide, written when the guide was built)."""
    model = config.model
    if model.mask == "adaptive":
        return f"adaptive (clustering, lambda {model.mask_lambda:g})"
    summary = config.train.get("guide") if isinstance(config.train, dict) else None
    if not isinstance(summary, dict) or not {"bank_tokens", "threshold"} <= set(summary):
        return "nearest-normal guide (config.json's train.guide records no bank size or threshold)"
    bank = int(summary["bank_tokens"])
    line = f"nearest-normal guide: bank {bank} tokens"
    if "training_tokens" in summary:
        line += f" of {int(summary['training_tokens'])}"
    dims = int(summary.get("dims", config.in_channels))
    if dims != config.in_channels:
        line += f" x {dims} principal axes of {config.in_channels} channels"
    line += f", threshold {float(summary['threshold']):.4g}"
    if "quantile" in summary:
        line += f" (held-out quantile {float(summary['quantile']):g})"
    mib = bank * dims * 2 / 2**20  # (M, d) float16; no graph holds it (export/graph_io.py)
    return line + f"; {mib:.1f} MiB float16 bank in the weights file"


def score_info(config: BundleConfig) -> str:
    """The score map, one line: the paper's reconstruction map, or this project's variant with its weight."""
    score = config.score
    if score.map == "reconstruction":
        return f"reconstruction (paper), sigma {score.sigma:g}, image score {score.image_score}"
    return (f"reconstruction + {score.guide_weight:.4g} x guide distance (held-out calibrated), sigma "
            f"{score.sigma:g}, image score {score.image_score}")


def c_runtime_info(package: Path | None = None) -> dict[str, str]:
    """Where this install's C runtime (libaminet, docs/c-api.md) lies, if the package carries it (the wheel
    does; so does `cmake --install build --component runtime --prefix <package folder>`), and whether it
    loads here (its version, or the loader's message, e.g. the libopenvino it needs)."""
    import ctypes

    from aminet_edge import c_library

    found = c_library.find(package)
    if found is None:
        return {"library": "not carried by this install (build it with CMake: docs/c-api.md)"}
    try:
        lib = c_library.load(package)
        lib.aminet_version.restype = ctypes.c_char_p
        loads = f"yes, version {lib.aminet_version().decode()}"
    except OSError as exc:
        loads = f"no ({exc})"
    return {"library": str(found.library), "headers": str(found.include),
            "cmake": f"{found.cmake_dir} (aminet_DIR for find_package(aminet); aminet-edge info --cmakedir)"
            if found.cmake_dir else "not installed",
            "loads": loads}


def measured_auto(bundle: str | Path, config: BundleConfig) -> str:
    """What `auto` runs on this CPU and why: the choice measured here (runtime.backends.auto) or, before the
    first Detector.load, the candidates it will time. Measures nothing."""
    from aminet_edge.runtime.backends import auto

    choice = auto.cached_choice(bundle, config, "cpu")
    if choice is None:
        found = ", ".join(map(str, auto.candidates(bundle, config))) or "none (the table's fallback: torch)"
        return (f"not measured on this machine yet: the first Detector.load times {found} (~{auto.BUDGET_S:g} s; "
                f"{auto.ENV}=table skips it)")
    return f"{choice.backend} {choice.precision}: {choice.reason}, measured here {choice.measured_at}"


def auto_table(bundle: str | Path, config: BundleConfig) -> dict[str, str] | None:
    """The measured table of `auto` on this CPU, one line per candidate, and the key it is valid for; None
    before the first measurement (or with AMINET_AUTO=table)."""
    from aminet_edge.runtime.backends import auto

    choice = auto.cached_choice(bundle, config, "cpu") if auto.mode() == "measure" else None
    if choice is None:
        return None
    rows = {f"{r.backend} {r.precision}": r.describe() + (" <- chosen" if (r.backend, r.precision) ==
                                                            (choice.backend, choice.precision) else "")
            for r in choice.table}
    key = choice.key
    libs = ", ".join(f"{k} {v}" for k, v in key["libraries"].items())
    rows["valid for"] = (f"{key['cpu']} ({key['cores']} cores; {', '.join(key['cpu_flags']) or 'no SIMD flags read'}), "
                         f"{libs}, the graphs' sha256 as recorded; any change measures again")
    rows["kept in"] = str(Path(bundle) / auto.CACHE_FILE)
    return rows


def bundle_info(bundle: str | Path, config: BundleConfig) -> dict[str, str]:
    """What a bundle holds (graphs, engines, calibration) and the backend `auto` picks on each device."""
    from aminet_edge.runtime.backends import BackendUnavailableError, auto, auto_reason, select_backend

    artifacts = config.artifacts or {}
    graphs = sorted(str(e.get("path", k)) for k, e in (artifacts.get("onnx") or {}).items() if isinstance(e, dict))
    out = {"model": f"{config.model.backbone}, {config.model.image_size} px, D={config.model.embed_dim}, "
                    f"depth {config.model.inpaint_depth}",
           "mask": mask_info(config),
           "score map": score_info(config),
           "tiling": (f"{config.tile.size} px tiles, overlap >= {config.tile.overlap} px, resized to "
                      f"{config.model.image_size} px" if config.tile else "off (whole image resized)"),
           "mask choice": str(config.train.get("mask_choice", "not recorded (a bundle trained before training "
                                                               "recorded why it chose its mask)")),
           "graphs": ", ".join(dict.fromkeys(graphs)) or "none (run `aminet-edge export`)",
           "engines": str(len(artifacts.get("engines") or [])),
           "calibrated": "yes" if config.calibration is not None else "no"}
    for device in ("cpu", "cuda"):
        if device == "cpu" and auto.mode() == "measure":
            out["auto on cpu"] = measured_auto(bundle, config)
            continue
        try:
            name, _ = select_backend(bundle, config, device)
            if name.startswith("onnxruntime"):
                from aminet_edge.runtime.backends.onnxruntime_backend import resolve_graph

                part = "model_b" if name == "onnxruntime-split" else "model"
                name += f" ({resolve_graph(Path(bundle), config, part, None)[1]} graphs)"
            elif name.startswith("openvino"):
                from aminet_edge.runtime.backends.openvino_backend import cpu_capabilities, resolve_precision

                name += f" ({resolve_precision(None, cpu_capabilities())})"
            out[f"auto on {device}"] = f"{name}; " + (f"{auto.ENV}=table: " if device == "cpu" else "") + \
                auto_reason(device, config)
        except BackendUnavailableError as exc:
            out[f"auto on {device}"] = f"none ({exc})".splitlines()[0][:200]
    return out


def collect_info(bundle: str | Path | None = None, verify: bool = False) -> dict[str, Any]:
    """A dict of sections; values are strings or dicts of strings. With `bundle`, the inference backends
    are checked for it and a "bundle" section is added; with `verify` also a "verify" section: each
    recorded file (and any unrecorded graph or engine) -> "ok" or its problem (aminet_edge.bundle.verify_bundle)."""
    from aminet_edge import __version__
    from aminet_edge.ops import available_backends
    from aminet_edge.runtime.backends import available_backends as inference_backends

    info: dict[str, Any] = {
        "aminet-edge": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "packages": {m: _version(m) for m in ("numpy", "torch", "triton", "onnx", "onnxruntime",
                                              "openvino", "tensorrt", "tensorrt_rtx", "pycuda")},
        "op backends": available_backends(),
    }
    from aminet_edge.runtime.backends import cpu_kind

    info["cpu"] = {"bf16": "native bf16 (AVX512_BF16 / AMX)", "vnni": "VNNI int8, no bf16",
                   "plain": "neither bf16 nor VNNI"}[cpu_kind()]
    config = read_config(bundle) if bundle is not None else None
    info["inference backends"] = inference_backends(bundle, config)
    info["c runtime"] = c_runtime_info()
    if bundle is not None and config is not None:
        info["bundle"] = bundle_info(bundle, config)
        table = auto_table(bundle, config)
        if table is not None:
            info["auto measured on this cpu"] = table
        if verify:
            info["verify"] = verify_bundle(bundle, config)
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        gpu = "unknown (torch not installed)"
    info["gpu"] = gpu
    return info
