"""Evaluation-time variants of a trained bundle (issue 14): which tokens the mask hides, and the score map.

Masks: the adaptive mask at several lambda; lambda calibrated on held-out normal images to a target share
of masked tokens; per-cluster boundaries fixed from held-out normal tokens (instead of each image's own
statistics); the nearest-normal guide (ModelConfig.mask = "nearest_normal", built by the product's
aminet_edge.training.guide) at several held-out quantiles, bank sizes and token dimensions (a PCA of the
training tokens to --guide-dims d, applied before the search); and, as a ceiling that needs the labels, the
ground-truth defect tokens (alone, and added to the adaptive mask). Maps: reconstruction (the paper's),
token-to-cluster distance, their sum, and with each guide its own map (reconstruction + guide distance,
weighted on the held-out images as training weighs it). No retraining: features and cluster assignments
are computed once (and kept in --feature-cache; the greedy coreset order in --coreset-order). Test and
held-out features are held as float16 here, so a guide decision within ~1e-3 (relative) of its threshold
may differ from the runtime's float32.

Guide bank selection without test labels (--guide-budget-mib): every guide candidate is compared, on the
held-out normal images only, with the reference guide (--guide-reference tokens, every dimension): the
IoU of the two masks on the held-out tokens (do they mask the same rare normal tokens?) and the masked
share of a threshold fitted on half the held-out images, measured on the other half (cross-fitted, target
1 - quantile). The candidate within the budget with the highest IoU is chosen; test metrics are printed
beside it for the report, never used to choose. --holdout-study resamples k held-out images to show how
stable the threshold (and the masked share it gives on the other held-out images) is for each k.

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
from guide_bank import holdout_study, reference_run, selection, sweep_guides  # noqa: E402

from aminet_edge.data.datasets import load_dataset  # noqa: E402
from aminet_edge.data.images import read_mask  # noqa: E402
from aminet_edge.evaluation.mask_coverage import DEFECT_TOKEN_FRACTION, mask_coverage, token_defect_fraction  # noqa: E402
from aminet_edge.evaluation.metrics import evaluate  # noqa: E402
from aminet_edge.model.pipeline import load_pipeline  # noqa: E402
from aminet_edge.ops import reference  # noqa: E402
from aminet_edge.data.batches import load_batches  # noqa: E402
from aminet_edge.model.guide import token_features  # noqa: E402
from aminet_edge.training.calibrate import mask_lambda_for_share  # noqa: E402
from aminet_edge.training.guide import pooled_tokens  # noqa: E402
from aminet_edge.training.trainer import recorded_split  # noqa: E402


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


def nearest_centre(tokens: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's distance to its nearest centre (N, L) float32 and that centre's index (N, L)."""
    return reference.cluster_distance(tokens, centers).min(-1)


def cluster_bounds(dist: torch.Tensor, assign: torch.Tensor, num_clusters: int, lam: float) -> torch.Tensor:
    """Per-cluster boundary from normal images' `nearest_centre` output, pooled over all of them: (P,) =
    mean + lam * std of the distances of the tokens assigned to each cluster (inf below 2 tokens)."""
    bounds = torch.full((num_clusters,), float("inf"))
    for p in range(num_clusters):
        d = dist[assign == p]
        if len(d) > 1:
            bounds[p] = d.mean() + lam * d.std()
    return bounds


def maps_for(pipeline, feats, dist, mask, sigma):  # type: ignore[no-untyped-def]
    """Reconstruction map (N, S, S) with the given token mask (N, L) (the paper's map) and token-distance
    map (N, S, S: `dist` (N, L), the nearest-centre distance, upsampled and smoothed as the other), float32."""
    net = pipeline.aminet
    size, g = net.cfg.image_size, net.cfg.grid_size
    rec = []
    with torch.no_grad():
        for i in range(0, len(feats), 8):
            f = feats[i:i + 8].float()
            r = net.inpaint_features(net.embed_inpaint_tokens(f), mask[i:i + 8])
            rec.append(reference.score_map(f, r, (size, size), sigma)[0])
    up = F.interpolate(dist.reshape(-1, 1, g, g), size=(size, size), mode="bilinear", align_corners=True)
    return torch.cat(rec).numpy(), reference.smooth(up[:, 0], sigma).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, float("inf")])
    parser.add_argument("--shares", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--cluster-lambdas", type=float, nargs="*", default=[0.0, 0.5],
                        help="lambda of the per-cluster boundaries fixed from held-out normals")
    parser.add_argument("--guide-quantiles", type=float, nargs="*", default=[0.95, 0.99],
                        help="held-out quantile of the nearest-normal distance above which a token is masked")
    parser.add_argument("--guide-bank-sizes", type=int, nargs="+", default=[65536],
                        help="most tokens in the guide's bank (greedy coreset beyond; 0: every training token)")
    parser.add_argument("--guide-dims", type=int, nargs="+", default=[0],
                        help="principal axes the guide's tokens are projected to before the search (0: none)")
    parser.add_argument("--guide-pairs", nargs="*", help="only these SIZE:DIMS guides of the sizes x dims grid")
    parser.add_argument("--guide-reference", type=int, default=65536,
                        help="bank size of the reference guide (every dimension) of the label-free criterion")
    parser.add_argument("--guide-budget-mib", type=float, default=8.0,
                        help="largest bank (float16) the label-free selection may choose, MiB")
    parser.add_argument("--holdout-study", type=int, nargs="*", default=[],
                        help="numbers k of held-out images to resample the reference guide's threshold from")
    parser.add_argument("--coreset-order", help="tensors file keeping the greedy coreset's order between runs")
    parser.add_argument("--feature-cache", help="tensors file: features loaded from it when it exists, else saved")
    parser.add_argument("--ground-truth", action="store_true", help="add the label-based ceiling rows")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    pipeline, config = load_pipeline(args.bundle)
    tr = config.train
    # the bundle's own split: same as training, on --data (the stored roots may be relative)
    try:
        fit, held = recorded_split(args.bundle, tr, [args.data])
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    test = load_dataset(args.data).test
    size, k = config.model.image_size, config.model.patch_size
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    has = np.array([s.label == 0 or s.mask_path is not None for s in test])
    masks = np.stack([read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    cache = Path(args.feature_cache) if args.feature_cache else None
    if cache is not None and cache.exists():
        loaded = torch.load(cache, weights_only=True)
        if loaded["bundle_weights"] != config.artifacts["weights"]["sha256"] or len(loaded["f_test"]) != len(test):
            raise SystemExit(f"{cache}: features of another bundle or data set; delete it")
        f_test, t_test, c_test, f_held, t_held, c_held, fit_tokens = (loaded[n] for n in (
            "f_test", "t_test", "c_test", "f_held", "t_held", "c_held", "fit_tokens"))
    else:
        f_test, t_test, c_test = features(pipeline, [s.path for s in test], config)
        f_held, t_held, c_held = features(pipeline, [s.path for s in held], config)
        with torch.no_grad():  # float32 features, as training and set-mask pool them
            fit_tokens = pooled_tokens((pipeline.extractor(b) for b in load_batches(
                [s.path for s in fit], size, config.mean, config.std, 8)), k)
        if cache is not None:
            torch.save({"bundle_weights": config.artifacts["weights"]["sha256"], "f_test": f_test, "t_test": t_test,
                        "c_test": c_test, "f_held": f_held, "t_held": t_held, "c_held": c_held,
                        "fit_tokens": fit_tokens}, cache)
    print(f"features: {time.perf_counter() - t0:.0f} s, {len(test)} test, {len(held)} held-out, "
          f"{len(fit_tokens):,} training tokens", flush=True)

    variants: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # name -> (test mask, held-out mask)

    def adaptive(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        return reference.adaptive_mask(t_test, c_test, lam)[0], reference.adaptive_mask(t_held, c_held, lam)[0]

    for lam in args.lambdas:
        variants[f"lambda {lam:g}"] = adaptive(lam)
    for share in args.shares:
        lam = mask_lambda_for_share(t_held, c_held, share)
        variants[f"share {share:g} (lambda {lam:.3f})"] = adaptive(lam)
    d_test, a_test = nearest_centre(t_test, c_test)
    d_held, a_held = nearest_centre(t_held, c_held)
    for lam in args.cluster_lambdas:
        bounds = cluster_bounds(d_held, a_held, c_held.shape[1], lam)
        variants[f"per-cluster held-out bound, lambda {lam:g}"] = (d_test > bounds[a_test], d_held > bounds[a_held])
    base = config.model.mask_lambda
    own_test, own_held = adaptive(base)
    runs = sweep_guides(fit_tokens, token_features(f_held, k), token_features(f_test, k), args.guide_bank_sizes,
                        args.guide_dims, args.guide_quantiles, tr["seed"], args.coreset_order,
                        {tuple(int(v) for v in p.split(":")) for p in args.guide_pairs} if args.guide_pairs else None) \
        if args.guide_quantiles else []  # type: ignore[arg-type]
    guides = {g.name: g for g in runs}
    for g in runs:
        variants[g.name] = (g.test_dist > g.threshold, g.held_dist > g.threshold)
    if args.ground_truth:
        truth = torch.from_numpy(token_defect_fraction(masks, config.model.grid_size) >= DEFECT_TOKEN_FRACTION)
        variants["ground truth (ceiling; needs labels)"] = (truth, None)
        variants[f"lambda {base:g} + ground truth (ceiling)"] = (own_test | truth, None)

    sigma = config.score.sigma
    # normalisers of the summed map, from held-out normals at the bundle's lambda: each map's mean value
    h_rec, h_dist = maps_for(pipeline, f_held, d_held, own_held, sigma)
    norm = (float(h_rec.mean()), float(h_dist.mean()))
    rows, out = [], {}
    guide_maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # guide name -> held-out (rec, guide) maps
    for name, (mask, held_mask) in variants.items():
        held_share = float(held_mask.float().mean()) if held_mask is not None else float("nan")
        cov = mask_coverage(mask.numpy()[has], masks[has], labels[has], np.array(types, object)[has])
        if name in guides:  # the guide's own map, weighted on the held-out images as training weighs it
            g = guides[name]
            rec, gmap = maps_for(pipeline, f_test, g.test_dist, mask, sigma)
            h_rec_g, h_gmap = maps_for(pipeline, f_held, g.held_dist, held_mask, sigma)
            weight = float(h_rec_g.mean() / h_gmap.mean())
            maps = {"rec": rec, "rec+guide": rec + weight * gmap}
            guide_maps[name] = (h_rec_g, h_gmap)
        else:
            rec, dist = maps_for(pipeline, f_test, d_test, mask, sigma)
            maps = {"rec": rec, "dist": dist, "rec+dist": rec / norm[0] + dist / norm[1]}
        for vname, amap in maps.items():
            if vname in ("dist", "rec+dist") and name != f"lambda {base:g}":
                continue  # score variants only with the bundle's own mask
            flat = amap.reshape(len(amap), -1)
            m_std = evaluate(labels, flat.std(1), masks[has], amap[has], types, pixel_rows=has)
            m_max = evaluate(labels, flat.max(1), None, None, types)
            key = f"{name} | {vname}"
            out[key] = {"held_out_masked": held_share, "coverage": cov, "std": m_std,
                        "max_image_auroc": m_max["image_auroc"]}
            per = " ".join(f"{t}:{cov['per_type'][t]['mask_recall']:.2f}/{v.get('pixel_auroc', float('nan')):.3f}"
                           for t, v in m_std["per_type"].items())
            rows.append(f"| {name} | {vname} | {held_share:.3f} | {cov['normal_masked_share']:.3f} | "
                        f"{cov['mask_recall']:.3f} | {m_std['image_auroc']:.4f} | {m_max['image_auroc']:.4f} | "
                        f"{m_std['pixel_auroc']:.4f} | {m_std['aupro']:.4f} | {per} |")
            print(rows[-1], flush=True)
    head = ["| mask | map | held-out normal tokens masked | test normal tokens masked | mask recall | "
            "image AUROC (std) | image AUROC (max) | pixel AUROC | AUPRO | per type: mask recall / pixel AUROC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    tables = head + rows
    if runs:
        cells = {g.name: (lambda m: f"{m['std']['image_auroc']:.4f} | {m['std']['pixel_auroc']:.4f} | "
                          f"{m['std']['aupro']:.4f} | {m['coverage']['mask_recall']:.3f}")(out[f"{g.name} | rec+guide"])
                 for g in runs}
        tables += [""] + selection(runs, args.guide_reference, args.guide_budget_mib, cells)[0]
        ref = reference_run(runs, args.guide_reference)
        if args.holdout_study:
            h_rec, h_gmap = guide_maps[ref.name]
            tables += [""] + holdout_study(ref, args.holdout_study, h_rec.reshape(len(h_rec), -1).mean(1),
                                           h_gmap.reshape(len(h_gmap), -1).mean(1))
    append_result("textures", f"bundle `{args.bundle}`, data `{args.data}`, "
                  f"{time.perf_counter() - t0:.0f} s\n\n" + "\n".join(tables))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
