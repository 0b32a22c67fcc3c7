"""Accuracy of reduced-precision inference: image and pixel AUROC of the torch backend per precision.

Usage: python bench/precision_accuracy.py BUNDLE DATA [--device cuda] [--precisions fp32 fp16 bf16]
                                         [--limit N] [--json PATH]
DATA is an MVTec-layout folder (its test split and ground-truth masks are read). Each precision runs
`Detector.predict_batch` (torch backend, fused ops, frames preprocessed on the device) over the same test
images; maps are compared with the masks at each image's own resolution (the Detector's output). The
criterion (issue 10): fp16 / bf16 image and pixel AUROC equal to fp32 within 0.002 ("holds" in the
output). --limit N keeps the first N good and N defective images (for dry runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TOLERANCE = 0.002


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from aminet_edge.data.datasets import load_dataset
    from aminet_edge.data.images import read_mask
    from aminet_edge.evaluation.metrics import auroc
    from aminet_edge.runtime import Detector

    if "fp32" not in args.precisions:
        sys.exit("--precisions must include fp32 (the reference)")
    test = load_dataset(args.data).test
    if args.limit:
        good = [s for s in test if s.label == 0][:args.limit]
        bad = [s for s in test if s.label == 1][:args.limit]
        test = good + bad
    labels = np.array([s.label for s in test])
    if len(set(labels.tolist())) < 2:
        sys.exit(f"{args.data}: the test split needs good and defective images")
    masks = [read_mask(s.mask_path) if s.mask_path else None for s in test]
    results: dict[str, dict] = {}
    for precision in args.precisions:
        try:
            det = Detector.load(args.bundle, backend="torch", device=args.device, precision=precision,
                                threshold=1.0, pixel_threshold=1.0, batch_size=args.batch_size)
        except (ValueError, ImportError, RuntimeError) as exc:
            results[precision] = {"skipped": f"{type(exc).__name__}: {exc}"}
            print(f"{precision}: skipped ({results[precision]['skipped']})", flush=True)
            continue
        preds = det.predict_batch([str(s.path) for s in test])
        det.close()
        broken = [p.source for p in preds if not p.ok]
        if broken:
            results[precision] = {"skipped": f"failed on {len(broken)} image(s), first {broken[0]}"}
            continue
        scores = np.array([p.score for p in preds])
        amaps = [np.asarray(p.anomaly_map) for p in preds]
        truth = np.concatenate([(m if m is not None else np.zeros(a.shape, bool)).ravel() for m, a in zip(masks, amaps)])
        maps = np.concatenate([a.ravel() for a in amaps])
        results[precision] = {"image_auroc": auroc(labels, scores), "pixel_auroc": auroc(truth, maps),
                              "scores": scores.tolist()}
        print(f"{precision}: image AUROC {results[precision]['image_auroc']:.4f}, pixel AUROC "
              f"{results[precision]['pixel_auroc']:.4f}", flush=True)
    ref = results.get("fp32", {})
    for precision, r in results.items():
        if precision == "fp32" or "skipped" in r or "skipped" in ref:
            continue
        r["d_image_auroc"] = r["image_auroc"] - ref["image_auroc"]
        r["d_pixel_auroc"] = r["pixel_auroc"] - ref["pixel_auroc"]
        r["max_score_rel_diff"] = float(np.max(np.abs(np.array(r["scores"]) - np.array(ref["scores"]))
                                               / np.maximum(np.abs(ref["scores"]), 1e-12)))
        r["holds"] = bool(abs(r["d_image_auroc"]) <= TOLERANCE and abs(r["d_pixel_auroc"]) <= TOLERANCE)
        print(f"{precision} vs fp32: image {r['d_image_auroc']:+.4f}, pixel {r['d_pixel_auroc']:+.4f}, max score "
              f"rel. diff {r['max_score_rel_diff']:.2e}: {'holds' if r['holds'] else 'DOES NOT hold'} "
              f"(tolerance {TOLERANCE})", flush=True)
    out = {"bundle": str(args.bundle), "data": str(args.data), "device": args.device, "images": len(test),
           "tolerance": TOLERANCE, "precisions": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
