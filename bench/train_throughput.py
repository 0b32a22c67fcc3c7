"""Training throughput on a device: images/s with the feature cache vs running the frozen backbone every
step, model-FLOPs utilisation, and the wall time a 300-epoch run on a 209-image category would take.

Usage: python bench/train_throughput.py [--preset cpu] [--images 32] [--batch 8] [--device auto]
       [--precision auto] [--compile] [--attention-cost] [--json out.json]
Both modes run the same optimisation step as training (aminet_edge.training.step.TrainStep: autocast,
GradScaler for fp16, fused AdamW on CUDA, under the same deterministic-kernel settings) on the same
images; the cached mode reads features computed once, the uncached mode recomputes them each step.
--attention-cost: the cached mode again with attention restricted to the math kernel (what repeatable
training uses on CUDA: aminet_edge.device.math_attention) and with every kernel torch has (flash,
memory-efficient: faster, not repeatable); the ratio is what repeatability costs.

FLOPs: counted by torch.utils.flop_counter on one AMI-Net forward + backward (matmuls, convolutions,
attention; the frozen backbone is not part of a cached training step, the optimizer is not counted).
MFU = FLOPs per image x cached images/s / the GPU's dense bf16 tensor-core peak (BF16_PEAK_TFLOPS;
reported against the bf16 peak whatever --precision is, so runs compare). No peak for CPUs: n/a.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import PRESETS, TrainConfig  # noqa: E402
from aminet_edge.device import (describe_device, make_generator, math_attention, repeatable,  # noqa: E402
                                resolve_device)
from aminet_edge.model.aminet import AMINet  # noqa: E402
from aminet_edge.model.features import build_feature_extractor  # noqa: E402
from aminet_edge.training.precision import autocast, resolve_precision  # noqa: E402
from aminet_edge.training.step import TrainStep  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets (H100/H200: "H100 Tensor
# Core GPU" and "H200" datasheets, SXM 1,979 / PCIe 1,513 with sparsity; A100 datasheet; L40S and L4
# datasheets; RTX 4090: Ada Lovelace architecture whitepaper, with FP32 accumulate). Matched in order
# against torch's device name. Jetson Orin is absent: NVIDIA publishes no dense bf16 figure for it.
BF16_PEAK_TFLOPS = (
    ("H200", 989.5), ("H100 PCIe", 756.0), ("H100", 989.5), ("A100", 312.0), ("L40S", 362.05),
    ("L4", 121.0), ("RTX 4090", 165.2),
)
EPOCHS, CATEGORY_IMAGES = 300, 209  # the authors' schedule; MVTec AD bottle's training set


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its torch name ("NVIDIA H200" -> 989.5), None if not in the table."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the losses, as train --compile")
    parser.add_argument("--attention-cost", action="store_true",
                        help="also time cached epochs with the math attention kernel alone vs every kernel")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    cfg = PRESETS[args.preset]
    dev = resolve_device(args.device)
    precision = resolve_precision(args.precision, dev)
    name = describe_device(dev)
    torch.manual_seed(0)
    extractor = build_feature_extractor(cfg.backbone, image_size=cfg.image_size, pretrained=False).to(dev)
    net = AMINet(cfg, extractor.channels).to(dev)
    step = TrainStep(net, TrainConfig(batch_size=args.batch), dev, precision, compile=args.compile)
    images = torch.randn(args.images, 3, cfg.image_size, cfg.image_size, device=dev)
    gen = make_generator(dev, 0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def epoch(features: torch.Tensor | None) -> float:
        sync()
        t = time.perf_counter()
        for i in range(0, args.images, args.batch):
            feat = features[i:i + args.batch] if features is not None else extractor(images[i:i + args.batch])
            step(feat, gen)
        sync()
        return args.images / (time.perf_counter() - t)

    with repeatable(dev):
        sync()
        t = time.perf_counter()
        cache = torch.cat([extractor(images[i:i + args.batch]) for i in range(0, args.images, args.batch)])
        sync()
        cache_s = time.perf_counter() - t
        with FlopCounterMode(display=False) as counter:
            with autocast(dev, precision):
                loss = net.losses(cache[:args.batch], TrainConfig().loss, gen)["total"]
            loss.backward()
        net.zero_grad(set_to_none=True)
        flops_per_image = counter.get_total_flops() / min(args.batch, args.images)
        epoch(cache)  # warm-up (and compilation with --compile)
        cached = max(epoch(cache) for _ in range(2))
        uncached = max(epoch(None) for _ in range(2))
        attention = {}
        if args.attention_cost:
            for label, only in (("math", True), ("any", False)):
                with math_attention(only):
                    epoch(cache)  # warm-up: another kernel
                    attention[label] = max(epoch(cache) for _ in range(2))

    achieved = flops_per_image * cached / 1e12
    peak = bf16_peak_tflops(name) if dev.type == "cuda" else None
    mfu = f"{100 * achieved / peak:.1f} %" if peak else "n/a"
    hours = (EPOCHS * CATEGORY_IMAGES / cached + cache_s / args.images * CATEGORY_IMAGES) / 3600
    threads = torch.get_num_threads() if dev.type == "cpu" else "-"
    table = "\n".join([
        "| preset | device | precision | threads | batch | images | cache build s | cached img/s | uncached img/s | "
        "ratio | GFLOP/img fwd+bwd | TFLOP/s | MFU (bf16 peak) | 300 ep x 209 img, h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.preset} ({cfg.backbone}, {cfg.image_size} px, D={cfg.embed_dim}, depth {cfg.inpaint_depth}) | "
        f"{name} | {precision}{' compiled' if args.compile else ''} | {threads} | {args.batch} | {args.images} | "
        f"{cache_s:.1f} | {cached:.2f} | {uncached:.2f} | {cached / uncached:.2f}x | {flops_per_image / 1e9:.1f} | "
        f"{achieved:.3f} | {mfu} | {hours:.2f} |"])
    if attention:
        table += (f"\n\nattention kernels, cached img/s: math alone (repeatable) {attention['math']:.2f}, any "
                  f"(flash / memory-efficient allowed) {attention['any']:.2f}: math costs "
                  f"{100 * (1 - attention['math'] / attention['any']):.1f} % of the throughput")
    append_result("train_throughput", table)
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset, "device": name, "precision": precision, "compile": args.compile,
            "batch": args.batch, "images": args.images, "cache_build_s": cache_s, "cached_img_s": cached,
            "uncached_img_s": uncached, "gflop_per_image": flops_per_image / 1e9, "achieved_tflops": achieved,
            "bf16_peak_tflops": peak, "mfu": achieved / peak if peak else None,
            "hours_300_epochs_209_images": hours, "attention_cached_img_s": attention or None},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
