"""Training throughput with the feature cache vs running the frozen backbone every step (images/s, ratio).

Usage: python bench/train_throughput.py [--preset cpu] [--images 32] [--batch 8]
Both modes run the same AMI-Net steps on the same preprocessed images; the cached mode reads features
computed once, the uncached mode recomputes them each step (what training without the cache does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import PRESETS, LossConfig  # noqa: E402
from aminet_edge.model.aminet import AMINet  # noqa: E402
from aminet_edge.model.features import build_feature_extractor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    extractor = build_feature_extractor(cfg.backbone, image_size=cfg.image_size, pretrained=False)
    net = AMINet(cfg, extractor.channels)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95))
    images = torch.randn(args.images, 3, cfg.image_size, cfg.image_size)
    gen = torch.Generator().manual_seed(0)

    def epoch(features: torch.Tensor | None) -> float:
        t = time.perf_counter()
        for i in range(0, args.images, args.batch):
            feat = features[i:i + args.batch] if features is not None else extractor(images[i:i + args.batch])
            loss = net.losses(feat, LossConfig(), gen)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return args.images / (time.perf_counter() - t)

    t = time.perf_counter()
    cache = torch.cat([extractor(images[i:i + args.batch]) for i in range(0, args.images, args.batch)])
    cache_s = time.perf_counter() - t
    epoch(cache)  # warm-up
    cached = max(epoch(cache) for _ in range(2))
    uncached = max(epoch(None) for _ in range(2))
    table = "\n".join([
        f"| preset | threads | images | cache build s | cached img/s | uncached img/s | ratio |",
        "|---|---|---|---|---|---|---|",
        f"| {args.preset} ({cfg.backbone}, {cfg.image_size} px, D={cfg.embed_dim}, depth {cfg.inpaint_depth}) | "
        f"{torch.get_num_threads()} | {args.images} | {cache_s:.1f} | {cached:.2f} | {uncached:.2f} | "
        f"{cached / uncached:.2f}x |"])
    append_result("train_throughput", table)


if __name__ == "__main__":
    main()
