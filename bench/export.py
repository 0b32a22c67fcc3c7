"""Export benchmark: onnxruntime CPU vs PyTorch eager latency, TensorRT-RTX build times and engine sizes,
and fp16 vs fp32 image AUROC through onnxruntime on a trained bottle bundle (when present).

Latency uses preset "cpu" (efficientnet_lite0 pretrained, D=384, depth 4, 256 px) with random AMI-Net
weights; both sides run in this process, one after the other, so their ratio is comparable even on a
shared machine (absolute times are not).
Usage: python bench/export.py [--bundle runs/bench-accuracy/mvtec_bottle] [--data ../shared/data/mvtec_bottle]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402

from aminet_edge.bundle import BundleConfig, read_config, write_config  # noqa: E402
from aminet_edge.config import PRESETS, ScoreConfig  # noqa: E402
from aminet_edge.export import trt_compat  # noqa: E402
from aminet_edge.export.engine import build_engine  # noqa: E402
from aminet_edge.export.onnx_export import export_onnx  # noqa: E402
from aminet_edge.model.pipeline import build_modules, load_pipeline, save_pipeline_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu_bundle(root: Path) -> Path:
    """Preset "cpu" bundle: pretrained backbone, random (seeded) AMI-Net."""
    torch.manual_seed(0)
    model = PRESETS["cpu"]
    extractor, aminet = build_modules(BundleConfig(model=model, in_channels=176, score=ScoreConfig(),
                                                   mean=(0, 0, 0), std=(1, 1, 1)), pretrained=True)
    config = BundleConfig(model=model, in_channels=176, score=ScoreConfig(), mean=extractor.mean,  # type: ignore[arg-type]
                          std=extractor.std)
    write_config(root, config)
    save_pipeline_weights(root, extractor, aminet)
    return root


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def latency_rows(bundle: Path) -> list[str]:
    pipeline, config = load_pipeline(bundle)
    size = config.model.image_size
    sessions = {p: session(bundle / name) for p, name in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"))}
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            eager = median_seconds(lambda: pipeline(x), repeats=5)
        for precision, s in sessions.items():
            t = median_seconds(lambda: s.run(None, {"images": x.numpy()}), repeats=5)
            rows.append(f"| latency b={batch} | onnxruntime {precision} {t * 1e3:.1f} ms vs eager "
                        f"{eager * 1e3:.1f} ms | {eager / t:.2f}x |")
    return rows


def engine_rows(bundle: Path) -> list[str]:
    if not trt_compat.is_installed("tensorrt_rtx"):
        return ["| TensorRT-RTX | not installed | - |"]
    rows = []
    for precision in ("fp32", "fp16"):
        start = time.perf_counter()
        path = build_engine(bundle, target="rtx", precision=precision, batch=(1, 1, 8))
        rows.append(f"| RTX engine {precision} (SM 80/86/89/120, batch 1-8) | build "
                    f"{time.perf_counter() - start:.1f} s | {path.stat().st_size / 2**20:.1f} MiB |")
    return rows


def auroc_rows(trained: Path, data: Path, work: Path) -> list[str]:
    """fp16 vs fp32 image AUROC through onnxruntime on the bundle's test split (a copy; the run is untouched)."""
    from aminet_edge.evaluation.metrics import auroc
    from aminet_edge.train.cache import load_batches

    if not (trained / "config.json").is_file() or not (data / "test").is_dir():
        return [f"| fp16 vs fp32 AUROC | skipped: {trained} or {data} absent | - |"]
    copy = work / "trained"
    copy.mkdir()
    for name in ("config.json", "weights.safetensors"):
        shutil.copy(trained / name, copy / name)
    config = read_config(copy)
    paths = sorted((data / "test").rglob("*.png"))
    labels = np.array([p.parent.name != "good" for p in paths])
    rows, scores = [], {}
    for precision in ("fp32", "fp16"):
        s = session(export_onnx(copy, precision, split=False)["model"])
        out = [s.run(["score"], {"images": b.numpy()})[0]
               for b in load_batches(paths, config.model.image_size, config.mean, config.std, 8)]
        scores[precision] = np.concatenate(out)
        rows.append(f"| image AUROC {precision} ({len(paths)} bottle test images) | onnxruntime | "
                    f"{auroc(labels, scores[precision]):.4f} |")
    rel = np.abs(scores["fp16"] - scores["fp32"]) / np.abs(scores["fp32"])
    rows.append(f"| fp16 vs fp32 image score | max relative difference | {rel.max():.2e} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bench-accuracy" / "mvtec_bottle")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = cpu_bundle(work / "cpu")
        start = time.perf_counter()
        export_onnx(bundle, "fp32", split=False)
        export_onnx(bundle, "fp16", split=False)
        rows = [f"| export fp32 + fp16 (preset cpu) | {time.perf_counter() - start:.1f} s | - |"]
        rows += latency_rows(bundle) + engine_rows(bundle) + auroc_rows(args.bundle, args.data, work)
    table = ("| what | measured | value / ratio |\n|---|---|---|\n" + "\n".join(rows) +
             f"\n\nPreset cpu, {torch.get_num_threads()} torch threads; CPU shared with other jobs (absolute "
             "times noisy, ratios measured back to back).\n")
    append_result("export", table)


if __name__ == "__main__":
    main()
