"""Evaluation-time variants of a trained bundle (issue 14): the mask threshold lambda, lambda calibrated
from held-out normal images to a target share of masked tokens, and the score map (reconstruction,
token-to-cluster distance, their sum). No retraining: backbone features and cluster assignments of the
test and held-out images are computed once and every variant reuses them.

Usage: python bench/textures.py --bundle /work/runs/bottle_cpu --data ../shared/data/mvtec_bottle
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.data.datasets import load_dataset  # noqa: E402
from aminet_edge.data.images import read_mask  # noqa: E402
from aminet_edge.evaluation.mask_coverage import mask_coverage  # noqa: E402
from aminet_edge.evaluation.metrics import evaluate  # noqa: E402
from aminet_edge.model.pipeline import load_pipeline  # noqa: E402
from aminet_edge.ops import reference  # noqa: E402
from aminet_edge.data.batches import load_batches  # noqa: E402
from aminet_edge.train.calibrate import mask_lambda_for_share  # noqa: E402
from aminet_edge.train.trainer import load_training_samples, split_holdout  # noqa: E402


def features(pipeline, paths, config):  # type: ignore[no-untyped-def]
    """Backbone features (N, C, h, w) float16, clustering tokens (N, L, D) and centres (N, P, D)."""
    feats, toks, cents = [], [], []
    with torch.no_grad():
        for batch in load_batches(paths, config.model.image_size, config.mean, config.std, 8):
            f = pipeline.extractor(batch)
            tokens, centers = pipeline.aminet.cluster(f)
            feats.append(f.half())
            toks.append(tokens)
            cents.append(centers)
    return torch.cat(feats), torch.cat(toks), torch.cat(cents)


def maps_for(pipeline, feats, tokens, centers, lam, sigma):  # type: ignore[no-untyped-def]
    """Adaptive mask (N, L) at `lam`, reconstruction map (N, S, S) (the paper's) and token-distance map
    (N, S, S: min distance to a centre, upsampled and smoothed as the other), float32."""
    net = pipeline.aminet
    size, g = net.cfg.image_size, net.cfg.grid_size
    masks, rec, dist = [], [], []
    with torch.no_grad():
        for i in range(0, len(feats), 8):
            f = feats[i:i + 8].float()
            mask, d, _ = reference.adaptive_mask(tokens[i:i + 8], centers[i:i + 8], lam)
            r = net.inpaint_features(net.embed_inpaint_tokens(f), mask)
            amap, _ = reference.score_map(f, r, (size, size), sigma)
            up = F.interpolate(d.reshape(-1, 1, g, g), size=(size, size), mode="bilinear", align_corners=True)
            masks.append(mask)
            rec.append(amap)
            dist.append(reference.smooth(up[:, 0], sigma))
    return torch.cat(masks).numpy(), torch.cat(rec).numpy(), torch.cat(dist).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, float("inf")])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    pipeline, config = load_pipeline(args.bundle)
    tr = config.train
    # the bundle's own held-out normals: same split as training, on --data (the stored roots may be relative)
    samples = load_training_samples([args.data], tr.get("few_shot"), tr["seed"])
    if len(samples) != tr["images"] + tr["held_out"]:
        raise SystemExit(f"{args.data} holds {len(samples)} training images, the bundle was trained on "
                         f"{tr['images']} + {tr['held_out']} held out: not its data set")
    _, held = split_holdout(samples, tr["holdout_fraction"], tr["seed"])
    test = load_dataset(args.data).test
    size = config.model.image_size
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    has = np.array([s.label == 0 or s.mask_path is not None for s in test])
    masks = np.stack([read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    f_test, t_test, c_test = features(pipeline, [s.path for s in test], config)
    f_held, t_held, c_held = features(pipeline, [s.path for s in held], config)
    print(f"features: {time.perf_counter() - t0:.0f} s, {len(test)} test, {len(held)} held-out", flush=True)

    lambdas = {f"lambda {lam:g}": lam for lam in args.lambdas}
    for share in args.shares:
        lam = mask_lambda_for_share(t_held, c_held, share)
        lambdas[f"share {share:g} (lambda {lam:.3f})"] = lam
    sigma = config.score.sigma
    # normalisers of the summed map, from held-out normals at the bundle's lambda: each map's mean value
    _, h_rec, h_dist = maps_for(pipeline, f_held, t_held, c_held, config.model.mask_lambda, sigma)
    norm = (float(h_rec.mean()), float(h_dist.mean()))
    rows, out = [], {}
    for name, lam in lambdas.items():
        held_share = float(reference.adaptive_mask(t_held, c_held, lam)[0].float().mean())
        mask, rec, dist = maps_for(pipeline, f_test, t_test, c_test, lam, sigma)
        cov = mask_coverage(mask[has], masks[has], labels[has], np.array(types, object)[has])
        variants = {"rec": rec, "dist": dist, "rec+dist": rec / norm[0] + dist / norm[1]}
        for vname, amap in variants.items():
            if vname != "rec" and name != f"lambda {config.model.mask_lambda:g}":
                continue  # score variants only at the bundle's own lambda
            flat = amap.reshape(len(amap), -1)
            m_std = evaluate(labels, flat.std(1), masks[has], amap[has], types, pixel_rows=has)
            m_max = evaluate(labels, flat.max(1), None, None, types)
            key = f"{name} | {vname}"
            out[key] = {"held_out_masked": held_share, "coverage": cov, "std": m_std, "max_image_auroc":
                        m_max["image_auroc"], "lambda": lam}
            per = " ".join(f"{k}:{v.get('pixel_auroc', float('nan')):.3f}" for k, v in m_std["per_type"].items())
            rows.append(f"| {name} | {vname} | {held_share:.3f} | {cov['normal_masked_share']:.3f} | "
                        f"{cov['mask_recall']:.3f} | {m_std['image_auroc']:.4f} | {m_max['image_auroc']:.4f} | "
                        f"{m_std['pixel_auroc']:.4f} | {m_std['aupro']:.4f} | {per} |")
            print(rows[-1], flush=True)
    head = ["| mask | map | held-out normal tokens masked | test normal tokens masked | mask recall | "
            "image AUROC (std) | image AUROC (max) | pixel AUROC | AUPRO | pixel AUROC per type |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    append_result("textures", f"bundle `{args.bundle}`, data `{args.data}`, "
                  f"{time.perf_counter() - t0:.0f} s\n\n" + "\n".join(head + rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
