"""Export benchmark: onnxruntime CPU vs PyTorch eager latency, TensorRT-RTX build times and engine sizes,
and the fp16 and int8 graphs against the fp32 one (image and pixel AUROC, output deltas) on a trained
bottle bundle.

Latency and engines use preset "cpu" (efficientnet_lite0 pretrained, D=384, 6 heads, depth 4, 256 px) with
random AMI-Net weights; eager and onnxruntime (fp32, fp16, int8) run in this process in alternation, so their ratio is
comparable even on a shared machine (absolute times are not). Engines: TensorRT-RTX ahead of time for
SM 80/86/89/120 (built, not run: no GPU). The fp16 / int8 comparison needs a trained bundle (default
runs/bottle-cpu, else runs/bench-accuracy/mvtec_bottle) and the MVTec data; otherwise it says unmeasured.
Usage: python bench/export.py [--bundle runs/bottle-cpu] [--data ../shared/data/mvtec_bottle] [--threads 1]
"""

from __future__ import annotations

import dataclasses
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.bundle import BundleConfig, read_config, weights_file  # noqa: E402
from aminet_edge.config import PRESETS, ScoreConfig  # noqa: E402
from aminet_edge.export import onnx_name, trt_compat  # noqa: E402
from aminet_edge.export.engine import build_engine  # noqa: E402
from aminet_edge.export.onnx_export import export_onnx  # noqa: E402
from aminet_edge.model.pipeline import build_modules, load_pipeline, save_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("fp16", "int8")  # graph precisions compared with fp32


def cpu_bundle(root: Path) -> Path:
    """Preset "cpu" bundle: pretrained backbone, random (seeded) AMI-Net."""
    torch.manual_seed(0)
    model = dataclasses.replace(PRESETS["cpu"], mask="adaptive")
    extractor, aminet = build_modules(BundleConfig(model=model, in_channels=176,
                                                   score=ScoreConfig(map="reconstruction"), mean=(0, 0, 0),
                                                   std=(1, 1, 1)), pretrained=True)
    config = BundleConfig(model=model, in_channels=176, score=ScoreConfig(map="reconstruction"),
                          mean=extractor.mean, std=extractor.std)  # type: ignore[arg-type]
    save_bundle(root, config, extractor, aminet)
    return root


def session(path: Path):  # type: ignore[no-untyped-def]
    """onnxruntime CPU session with as many intra-op threads as torch uses (a like-for-like ratio)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_rows(bundle: Path, repeats: int = 7) -> list[str]:
    """Median latency of eager PyTorch and onnxruntime fp32/fp16/int8, timed in alternation (repeat i runs each
    contender once), so load from other processes hits all of them alike."""
    pipeline, config = load_pipeline(bundle)
    size = config.model.image_size
    sessions = {p: session(bundle / onnx_name("model", p)) for p in ("fp32", *LOWER)}
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        runs = {"eager": lambda: pipeline(x)}
        runs.update({p: (lambda s=s: s.run(None, {"images": x.numpy()})) for p, s in sessions.items()})
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.no_grad():
            for i in range(repeats + 1):  # the first round warms up
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    if i:
                        times[name].append(time.perf_counter() - start)
        eager = statistics.median(times["eager"])
        for precision in sessions:
            t = statistics.median(times[precision])
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
    """fp16 and int8 vs fp32 graphs through onnxruntime on the data set's test split, with a copy of a trained
    bundle (the run is untouched): image and pixel AUROC of each, and how far the outputs move."""
    from aminet_edge.data.datasets import load_dataset
    from aminet_edge.data.images import read_mask
    from aminet_edge.evaluation.metrics import auroc
    from aminet_edge.data.batches import load_batches

    if not (trained / "config.json").is_file() or not (data / "test").is_dir():
        return [f"| fp16 / int8 vs fp32 AUROC | unmeasured: no trained bundle at {trained} or no data at {data} | - |"]
    copy = work / "trained"
    copy.mkdir()
    for name in ("config.json", weights_file(trained, read_config(trained)).name):
        shutil.copy(trained / name, copy / name)
    config = read_config(copy)
    size = config.model.image_size
    test = load_dataset(data).test
    labels = np.array([s.label for s in test])
    truth = np.stack([read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    rows, out = [], {}
    for precision in ("fp32", *LOWER):
        s = session(export_onnx(copy, precision, split=False)["model"])
        runs = [s.run(["amap", "score", "mask"], {"images": b.numpy()})
                for b in load_batches([t.path for t in test], size, config.mean, config.std, 8)]
        out[precision] = [np.concatenate(parts) for parts in zip(*runs)]
        rows.append(f"| {precision} graph ({len(test)} {data.name} test images, bundle {trained}) | image / pixel "
                    f"AUROC | {auroc(labels, out[precision][1]):.4f} / {auroc(truth, out[precision][0]):.4f} |")
    amap32, score32, mask32 = out["fp32"]
    for precision in LOWER:
        amap, score, mask = out[precision]
        rows.append(f"| {precision} vs fp32 image score | max relative difference | "
                    f"{(np.abs(score - score32) / np.abs(score32)).max():.2e} |")
        rows.append(f"| {precision} vs fp32 map | mean abs difference / mean fp32 map; max / max | "
                    f"{np.abs(amap - amap32).mean() / np.abs(amap32).mean():.2e}; "
                    f"{np.abs(amap - amap32).max() / np.abs(amap32).max():.2e} |")
        rows.append(f"| {precision} vs fp32 mask | tokens that differ | {(mask != mask32).mean():.2%} |")
    return rows


def default_bundle() -> Path:
    """A trained bottle bundle: runs/bottle-cpu, else the accuracy benchmark's."""
    for path in (ROOT / "runs" / "bottle-cpu", ROOT / "runs" / "bench-accuracy" / "mvtec_bottle"):
        if (path / "config.json").is_file():
            return path
    return ROOT / "runs" / "bottle-cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=None, help="trained bundle [default: runs/bottle-cpu, "
                        "else runs/bench-accuracy/mvtec_bottle]")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime intra-op threads (default 1: on a loaded 2-core machine two "
                             "OpenMP threads made eager PyTorch ~18x slower, 2.1 s vs 0.11 s per image)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = cpu_bundle(work / "cpu")
        start = time.perf_counter()
        for precision in ("fp32", *LOWER):
            export_onnx(bundle, precision, split=False)
        rows = [f"| export fp32 + fp16 + int8 (preset cpu) | {time.perf_counter() - start:.1f} s | - |"]
        rows += latency_rows(bundle) + engine_rows(bundle)
        rows += auroc_rows(args.bundle or default_bundle(), args.data, work)
    table = ("| what | measured | value / ratio |\n|---|---|---|\n" + "\n".join(rows) +
             f"\n\nPreset cpu (random AMI-Net weights for latency and engines), {torch.get_num_threads()} torch and "
             f"onnxruntime threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end: the "
             "CPU is shared with other jobs, so absolute times are noisy; the ratios come from alternating runs.\n")
    append_result("export", table)


if __name__ == "__main__":
    main()
