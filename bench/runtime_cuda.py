"""End-to-end `Detector.predict` with the torch backend on CUDA: fused/graph paths vs torch eager, one run.

Usage: python bench/runtime_cuda.py [--device cuda] [--preset paper] [--batches 1 32] [--repeats 20]
                                   [--json PATH] [--no-append]
Model: `--preset` (default "paper": WideResNet50, 256 px, C = 1792) with random weights (timing does
not depend on what the weights learned), written to a temporary bundle. Inputs: uint8 RGB frames at
the model's size (decoded camera frames; no resize). Each variant is a Detector over the same bundle:
- torch eager (reference): reference ops, host preprocessing, fp32, no graphs: PyTorch as trained;
- fused: Triton ops (ops_backend auto), frames to the device once and preprocessed there;
- fused + CUDA graphs: the above with one captured graph per batch size, fp32 / fp16 / bf16.
Per variant and batch: latency = median wall time of one predict call (whole call: upload, model,
one copy back, host post-processing), throughput = batch / latency; ratios vs torch eager at the same
batch. Goals (issue 10): batch 1 <= 1.5 ms and >= 3x eager; batch 32 >= 3,000 images/s.
Variants that cannot run here by design (CUDA graphs on the CPU, bf16 before SM 80) are listed as skipped
with the reason; a variant that fails to load or run is listed as failed, and the exit status is 1 when
any failed or no variant gave a figure.
"""

from __future__ import annotations

import dataclasses
import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402

VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (  # (label, backend options)
    ("torch eager (reference ops, host preprocess, fp32)",
     {"ops_backend": "reference", "device_preprocess": False}),
    ("fused ops, device preprocess, fp32", {"ops_backend": "auto", "device_preprocess": True}),
    ("fused + CUDA graphs, fp32", {"ops_backend": "auto", "device_preprocess": True, "cuda_graph": True}),
    ("fused + CUDA graphs, fp16", {"ops_backend": "auto", "device_preprocess": True, "cuda_graph": True,
                                   "precision": "fp16"}),
    ("fused + CUDA graphs, bf16", {"ops_backend": "auto", "device_preprocess": True, "cuda_graph": True,
                                   "precision": "bf16"}),
)


def make_bundle(path: Path, preset: str) -> Path:
    """A loadable bundle of `preset` with random weights, written by the product's own save path (weights
    recorded in config.json); no calibration: the Detector gets explicit thresholds."""
    import torch

    from aminet_edge.bundle import BundleConfig
    from aminet_edge.config import PRESETS, ScoreConfig
    from aminet_edge.model.features import build_feature_extractor
    from aminet_edge.model.pipeline import build_modules, save_bundle

    torch.manual_seed(0)
    model = dataclasses.replace(PRESETS[preset], mask="adaptive")
    probe = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=False)
    mean, std = probe.mean, probe.std
    config = BundleConfig(model=model, in_channels=probe.channels, score=ScoreConfig(map="reconstruction"),
                          mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))
    extractor, aminet = build_modules(config)
    return save_bundle(path, config, extractor, aminet)


def not_applicable(options: dict[str, Any], device: str) -> str | None:
    """Why a variant cannot run on `device` by design (not a failure), else None."""
    import torch

    if options.get("cuda_graph") and device != "cuda":
        return "CUDA graphs need a CUDA device"
    if options.get("precision") == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        return f"bf16 needs an SM 80+ GPU ({torch.cuda.get_device_name(0)})"
    return None


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to the results file (bench/out/)")
    args = parser.parse_args(argv)

    import torch

    from aminet_edge.runtime import Detector

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU visible to torch")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="aminet-runtime-cuda-") as tmp:
        bundle = make_bundle(Path(tmp) / "bundle", args.preset)
        from aminet_edge.bundle import read_config

        size = read_config(bundle).model.image_size
        frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(args.batches))]
        for label, options in VARIANTS:
            reason = not_applicable(options, args.device)
            if reason is not None:
                skipped[label] = reason
                print(f"{label}: skipped ({reason})", flush=True)
                continue
            try:
                det = Detector.load(bundle, backend="torch", device=args.device, threshold=1.0,
                                    pixel_threshold=1.0, batch_size=max(args.batches), **options)
            except Exception as exc:  # noqa: BLE001 - reported as this variant's failure
                failed[label] = f"load: {type(exc).__name__}: {exc}"
                print(f"{label}: FAILED ({failed[label]})", flush=True)
                continue
            try:
                for b in args.batches:
                    batch = frames[:b]

                    def call() -> None:
                        det.predict(batch)
                        synchronize(args.device)
                    seconds = median_seconds(call, repeats=args.repeats, warmup=2)
                    rows.append({"variant": label, "batch": b, "ms_per_call": seconds * 1e3,
                                 "images_per_s": b / seconds})
                    print(f"{label:52s} batch {b:3d}: {seconds * 1e3:9.2f} ms/call {b / seconds:10.1f} img/s",
                          flush=True)
            except Exception as exc:  # noqa: BLE001 - a capture or kernel failure: keep the other variants
                failed[label] = f"predict: {type(exc).__name__}: {exc}"
                print(f"{label}: FAILED ({failed[label]})", flush=True)
            finally:
                det.close()
    eager = {r["batch"]: r["ms_per_call"] for r in rows if r["variant"] == VARIANTS[0][0]}
    for r in rows:
        r["vs_eager"] = eager[r["batch"]] / r["ms_per_call"] if r["batch"] in eager else None
    head = "| variant | batch | ms per call | images/s | vs eager |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['vs_eager']:.2f}x" if r["vs_eager"] else "-"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['ms_per_call']:.2f} | {r['images_per_s']:.1f} | {ratio} |")
    lines.append("")
    lines.append(f"{where}; torch {torch.__version__}; preset {args.preset} (random weights); uint8 frames at model "
                 f"size; median of {args.repeats}")
    for label, reason in skipped.items():
        lines.append(f"- {label}: skipped: {reason}")
    for label, reason in failed.items():
        lines.append(f"- {label}: FAILED: {reason}")
    table = "\n".join(lines)
    result = {"where": where, "torch": torch.__version__, "preset": args.preset, "repeats": args.repeats,
              "rows": rows, "skipped": skipped, "failed": failed}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.no_append:
        print(table)
    else:
        append_result("runtime_cuda", table)
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["failed"] or not outcome["rows"] else 0)
