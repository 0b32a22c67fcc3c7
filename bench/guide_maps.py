"""Score maps of a guided bundle (issue 14): the reconstruction map (the product's), the guide's own
distance map, and their sum, each normalised by its mean on the held-out normal images (no free parameter).

The mask is the bundle's nearest-normal guide throughout; only the map changes. The distance map is each
token's distance to the bank, upsampled and smoothed as the reconstruction map (bench/textures.py's
maps_for). Image score: the map's std (the product's) and, for reference, its max.

Usage: python bench/guide_maps.py --bundle RUN --data DATA [--feature-cache F (bench/textures.py's)]
RUN must use the nearest-normal guide (`aminet-edge set-mask RUN DATA --mask nearest-normal`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402
from textures import features, maps_for  # noqa: E402

from aminet_edge.data.datasets import load_dataset  # noqa: E402
from aminet_edge.data.images import read_mask  # noqa: E402
from aminet_edge.evaluation.metrics import evaluate  # noqa: E402
from aminet_edge.model.pipeline import load_pipeline  # noqa: E402
from aminet_edge.training.trainer import recorded_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--feature-cache", help="bench/textures.py's --feature-cache file of the same bundle's weights")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    pipeline, config = load_pipeline(args.bundle)
    guide = pipeline.guide
    if guide is None:
        raise SystemExit(f"{args.bundle} uses the {config.model.mask!r} mask; set the nearest-normal guide first")
    tr = config.train
    try:
        held = recorded_split(args.bundle, tr, [args.data])[1]
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    test = load_dataset(args.data).test
    size = config.model.image_size
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    has = np.array([s.label == 0 or s.mask_path is not None for s in test])
    masks = np.stack([read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    if args.feature_cache:  # the network's and backbone's weights are the same before and after set-mask
        cached = torch.load(args.feature_cache, weights_only=True)
        f_test, f_held = cached["f_test"], cached["f_held"]
    else:
        f_test = features(pipeline, [s.path for s in test], config)[0]
        f_held = features(pipeline, [s.path for s in held], config)[0]
    if len(f_test) != len(test) or len(f_held) != len(held):
        raise SystemExit("the feature cache holds another data set's features")

    def guided(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [guide(f[i:i + 32].float()) for i in range(0, len(f), 32)]
        return torch.cat([m for m, _ in parts]), torch.cat([d for _, d in parts])

    (m_test, d_test), (m_held, d_held) = guided(f_test), guided(f_held)
    sigma = config.score.sigma
    h_rec, h_dist = maps_for(pipeline, f_held, d_held, m_held, sigma)
    rec, dist = maps_for(pipeline, f_test, d_test, m_test, sigma)
    maps = {"reconstruction (product)": rec, "guide distance": dist,
            "reconstruction + guide distance": rec / float(h_rec.mean()) + dist / float(h_dist.mean())}
    rows = ["| map | image AUROC (std) | image AUROC (max) | pixel AUROC | AUPRO | per type pixel AUROC |",
            "|---|---:|---:|---:|---:|---|"]
    for name, amap in maps.items():
        flat = amap.reshape(len(amap), -1)
        m_std = evaluate(labels, flat.std(1), masks[has], amap[has], types, pixel_rows=has)
        m_max = evaluate(labels, flat.max(1), None, None, types)
        per = " ".join(f"{t}:{v.get('pixel_auroc', float('nan')):.3f}" for t, v in m_std["per_type"].items())
        rows.append(f"| {name} | {m_std['image_auroc']:.4f} | {m_max['image_auroc']:.4f} | "
                    f"{m_std['pixel_auroc']:.4f} | {m_std['aupro']:.4f} | {per} |")
        print(rows[-1], flush=True)
    append_result("guide_maps", f"bundle `{args.bundle}`, data `{args.data}`, "
                  f"{time.perf_counter() - t0:.0f} s\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
