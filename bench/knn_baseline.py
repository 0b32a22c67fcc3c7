"""The kNN baseline of `aminet-edge evaluate --baseline knn` without a trained bundle: the same functions
on a freshly built (pretrained, frozen) backbone, for data sets whose AMI-Net bundle is not trained yet.

Usage: python bench/knn_baseline.py --data ../shared/data/magnetic_tile [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import ScoreConfig  # noqa: E402
from aminet_edge.data.datasets import load_dataset  # noqa: E402
from aminet_edge.data.images import read_mask  # noqa: E402
from aminet_edge.evaluation.knn_baseline import BANK_CAP, build_bank, knn_scores  # noqa: E402
from aminet_edge.evaluation.metrics import evaluate  # noqa: E402
from aminet_edge.model.features import build_feature_extractor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--bank-size", type=int, default=BANK_CAP)
    parser.add_argument("--json", help="write the metrics here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ext = build_feature_extractor(args.backbone, image_size=args.image_size)
    split = load_dataset(args.data)
    size = args.image_size
    bank, total = build_bank(ext, [s.path for s in split.train], size, ext.mean, ext.std, args.bank_size)
    scores, maps = knn_scores(ext, bank, [s.path for s in split.test], size, ext.mean, ext.std, ScoreConfig.sigma)
    test = split.test
    has = np.array([s.label == 0 or s.mask_path is not None for s in test])
    masks = np.stack([read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    m = evaluate(np.array([s.label for s in test]), scores, masks[has], maps[has], [s.defect_type for s in test],
                 pixel_rows=has)
    seconds = time.perf_counter() - t0
    per = " ".join(f"{k}: {v['image_auroc']:.3f} / {v.get('pixel_auroc', float('nan')):.3f}"
                   for k, v in m["per_type"].items())
    table = "\n".join([
        "| data | backbone | px | bank | image AUROC | pixel AUROC | AUPRO | per type (image / pixel) | s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {Path(args.data).name} | {args.backbone} | {size} | {len(bank):,} of {total:,} | {m['image_auroc']:.4f} | "
        f"{m['pixel_auroc']:.4f} | {m['aupro']:.4f} | {per} | {seconds:.0f} |"])
    append_result("knn_baseline", table)
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1) + "\n")


if __name__ == "__main__":
    main()
