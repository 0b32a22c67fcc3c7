"""End-to-end CPU latency of `Detector.predict` per image, each CPU backend as a ratio vs PyTorch eager.

Usage: python bench/runtime.py [--preset cpu] [--batches 1 8] [--repeats 3] [--threads N] [--bundle DIR]

One run measures, on the same images (uint8 RGB 512x512 arrays, decoded-frame case) and the same bundle:
- torch eager (reference): the torch backend with the pure-PyTorch reference ops, as training runs them;
- torch + C++ ops: the torch backend with the fused ops on the C++ kernels (ops_backend="auto");
- onnxruntime: model.onnx in one session (the fused ops as the reference's ONNX nodes), fp32 and int8
  (`export --precision int8`: the inpainting blocks' MatMuls quantised, aminet_edge.export.quantize);
- onnxruntime-split + C++: model_a.onnx -> C++ adaptive_mask -> model_b.onnx -> C++ score_map, fp32 and int8;
- openvino / openvino-split + C++: the fp32 graphs on OpenVINO's CPU plugin in fp32 (its default), and in
  bf16 where the CPU has native bf16 (opt-in: OpenVINO 2026.4 runs the mask and score map in bf16 too);
- openvino int8: OpenVINO's statically quantised single graph (`export --precision int8
  --calibration-data`; the built bundle calibrates it on its random placeholder frames: speed does not
  depend on the scales, accuracy is bench/openvino_accuracy.py's).
The variants run interleaved (each loaded once, then every variant per repeat), so a shared machine's load
hits them alike. OpenVINO's load time is also measured with an empty compile cache and again with it filled.
Every timing is the whole predict call (preprocess, backend, resize of the map to 512x512, mask) divided
by the batch size; median of --repeats after one warm-up. Ratios are speed-ups vs torch eager (> 1 = faster).
The bundle (default runs/bench-runtime-<preset>, built on first use and reused; bench/soak.py shares
it) has efficientnet_lite0 pretrained when its weights load and random AMI-Net weights: timing does not
depend on what the weights learned. Its calibration is a placeholder from random frames.
"""

from __future__ import annotations

import dataclasses
import argparse
import importlib.util
import os
import tempfile
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402

VARIANTS = (  # (label, backend, options)
    ("torch eager (reference ops)", "torch", {"ops_backend": "reference"}),
    ("torch + C++ ops", "torch", {"ops_backend": "auto"}),
    ("onnxruntime fp32 (single graph)", "onnxruntime", {"precision": "fp32"}),
    ("onnxruntime int8 (single graph)", "onnxruntime", {"precision": "int8"}),
    ("onnxruntime-split + C++ fp32", "onnxruntime-split", {"precision": "fp32"}),
    ("onnxruntime-split + C++ int8", "onnxruntime-split", {"precision": "int8"}),
    # why the split backend turns onnxruntime's busy-waiting threads off (runtime default): with them on,
    # the idle threads of one half steal the cores from the C++ kernels and the other half
    ("onnxruntime-split + C++ fp32, ORT spinning on", "onnxruntime-split", {"precision": "fp32", "spinning": True}),
    ("openvino fp32 (single graph)", "openvino", {"precision": "fp32"}),
    ("openvino-split + C++ fp32", "openvino-split", {"precision": "fp32"}),
    ("openvino int8 (single graph)", "openvino", {"precision": "int8"}),
)
# OpenVINO bf16 (opt-in), added where the CPU has native bf16
OPENVINO_BF16 = (("openvino bf16 (single graph)", "openvino", {"precision": "bf16"}),
                 ("openvino-split + C++ bf16", "openvino-split", {"precision": "bf16"}))


DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "runs" / "bench-runtime-{preset}"


def build_bundle(path: Path, preset: str) -> str:
    """A bundle of `preset` with random AMI-Net weights, exported to ONNX; returns the backbone's source."""
    import torch

    from aminet_edge.bundle import BundleConfig
    from aminet_edge.config import PRESETS, ScoreConfig
    from aminet_edge.export.onnx_export import export_onnx
    from aminet_edge.model.aminet import AMINet
    from aminet_edge.model.features import build_feature_extractor
    from aminet_edge.model.pipeline import save_bundle

    torch.manual_seed(0)
    model = dataclasses.replace(PRESETS[preset], mask="adaptive")
    try:
        extractor = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=True)
        source = f"{model.backbone} pretrained"
    except Exception as exc:  # noqa: BLE001 - weights absent offline: timing is the same with random ones
        print(f"pretrained {model.backbone} unavailable ({exc}); using random backbone weights")
        extractor = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=False)
        source = f"{model.backbone} random"
    aminet = AMINet(model, extractor.channels)
    config = BundleConfig(model=model, in_channels=extractor.channels, score=ScoreConfig(map="reconstruction"),
                          mean=tuple(extractor.mean), std=tuple(extractor.std))
    path.mkdir(parents=True, exist_ok=True)
    save_bundle(path, config, extractor, aminet)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (model.image_size,) * 2 + (3,), dtype=np.uint8) for _ in range(4)]
    from PIL import Image

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as calib:
        warnings.simplefilter("ignore")
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(Path(calib) / f"{i}.png")
        # the fp32 graphs, their onnxruntime int8 copies, OpenVINO's int8 graph (when nncf is installed)
        export_onnx(path, "int8", calibration_data=[calib] if importlib.util.find_spec("nncf") else ())
    # placeholder calibration (random frames' max score and map value) so the default threshold loads
    from aminet_edge.bundle import Calibration, read_config, write_config

    det = Detector.load(path, backend="onnxruntime", precision="fp32", threshold=1.0, pixel_threshold=1.0)
    results = det.predict(frames)
    det.close()
    config = read_config(path)
    config.calibration = Calibration(image_threshold=max(r.score for r in results),
                                     pixel_threshold=max(float(r.anomaly_map.max()) for r in results))
    write_config(path, config)
    (path / "SOURCE").write_text(source + "\n")
    return source


def ensure_bundle(path: Path | str | None, preset: str = "cpu") -> Path:
    """`path` (default DEFAULT_BUNDLE for `preset`), built by build_bundle unless it already holds a bundle."""
    path = Path(str(path or DEFAULT_BUNDLE).format(preset=preset))
    missing = [n for n in ("config.json", "model_b_int8.onnx") if not (path / n).is_file()]
    if importlib.util.find_spec("nncf") and not (path / "model_int8_static.onnx").is_file():
        missing.append("model_int8_static.onnx")  # OpenVINO's int8 graph, built when nncf is installed
    if missing:
        print(f"building the {preset} bench bundle in {path} ...", flush=True)
        build_bundle(path, preset)
    return path


def openvino_load_seconds(bundle: Path, threads: int | None) -> tuple[float, float] | None:
    """Detector.load time of the openvino backend with its compile cache emptied, then filled; None without
    openvino."""
    import shutil
    import time

    from aminet_edge.runtime.backends import backend_status
    from aminet_edge.runtime.backends.openvino_backend import CACHE_DIR

    if backend_status("openvino", bundle, None, "cpu") is not None:
        return None
    shutil.rmtree(bundle / CACHE_DIR, ignore_errors=True)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        Detector.load(bundle, backend="openvino", threshold=1.0, pixel_threshold=1.0, threads=threads).close()
        seconds.append(time.perf_counter() - t0)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--size", type=int, default=512, help="input frame side in pixels")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="an exported bundle (default: runs/bench-runtime-<preset>, built if absent)")
    args = parser.parse_args()

    bundle = ensure_bundle(args.bundle, args.preset)
    load_start = os.getloadavg()[0]  # the machine's load when timing starts (shared machines: say it)
    source = (bundle / "SOURCE").read_text().strip() if (bundle / "SOURCE").is_file() else "given bundle"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(max(args.batches))]

    loads = openvino_load_seconds(bundle, args.threads)
    variants = list(VARIANTS)
    from aminet_edge.runtime.backends import backend_status
    from aminet_edge.bundle import has_graph, read_config
    from aminet_edge.runtime.backends.openvino_backend import INT8_GRAPH, cpu_capabilities

    if backend_status("openvino", bundle, None, "cpu") is None:
        if "BF16" in cpu_capabilities():
            variants += list(OPENVINO_BF16)
        if not has_graph(read_config(bundle), "model", INT8_GRAPH):
            print(f"{bundle} has no OpenVINO int8 graph (nncf missing at build?): openvino int8 not measured")
            variants = [v for v in variants if v[2].get("precision") != "int8" or v[1] != "openvino"]
    else:
        variants = [v for v in variants if not v[1].startswith("openvino")]
    detectors = {}
    for label, backend, options in variants:
        if args.threads:
            options = {**options, "threads": args.threads}
        detectors[label] = Detector.load(bundle, backend=backend, threshold=1.0, pixel_threshold=1.0, **options)
    samples: dict[tuple[str, int], list[float]] = {}
    for b in args.batches:
        batch = frames[:b]
        for label, det in detectors.items():
            det.predict(batch)  # warm-up
        for _ in range(args.repeats):  # interleaved: every variant once per repeat
            for label, det in detectors.items():
                samples.setdefault((label, b), []).append(median_seconds(lambda: det.predict(batch), 1, 0) / b)
        for label in detectors:
            print(f"{label:40s} batch {b}: {np.median(samples[(label, b)]) * 1e3:8.1f} ms/image", flush=True)
    times = {k: float(np.median(v)) for k, v in samples.items()}
    for det in detectors.values():
        det.close()

    base = variants[0][0]
    int8 = "onnxruntime int8 (single graph)"
    head = ("| backend | " + " | ".join(f"batch {b}: ms/image | vs eager | vs ORT int8" for b in args.batches)
            + " |")
    rule = "|---|" + "---:|---:|---:|" * len(args.batches)
    rows = []
    for label, _, _ in variants:
        cells = [f"{times[(label, b)] * 1e3:.1f} | {times[(base, b)] / times[(label, b)]:.2f}x | "
                 f"{times[(int8, b)] / times[(label, b)]:.2f}x" for b in args.batches]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    auto = Detector.load(bundle, threshold=1.0, pixel_threshold=1.0)
    load = (f"; OpenVINO load {loads[0]:.1f} s with an empty compile cache, {loads[1]:.1f} s with it filled"
            if loads else "")
    note = (f"\npreset {args.preset} ({source}), {args.size}x{args.size} uint8 frames, end-to-end predict, "
            f"median of {args.repeats} interleaved repeats, {args.threads or os.cpu_count()} threads, load average "
            f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; Detector.load(backend='auto') picks {auto.backend} "
            f"({auto.precision}){load}\n")
    append_result("runtime", "\n".join([head, rule, *rows]) + "\n" + note)


if __name__ == "__main__":
    main()
