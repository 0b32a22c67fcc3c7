"""Accuracy on the shared real data: train a bundle per data set, evaluate, record metrics and timings.

Usage: python bench/accuracy.py [--data ../shared/data/mvtec_bottle ...] [--preset cpu] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import PRESETS, TrainConfig  # noqa: E402
from aminet_edge.evaluation.evaluate import evaluate_bundle  # noqa: E402
from aminet_edge.training.trainer import train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", nargs="+", default=[str(SHARED / "mvtec_bottle"), str(SHARED / "magnetic_tile")])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--jitter", action="store_true")
    parser.add_argument("--out", default="runs/bench-accuracy")
    args = parser.parse_args()
    model = PRESETS[args.preset]
    if args.backbone:
        model = replace(model, backbone=args.backbone)
    model = replace(model, feature_jitter=args.jitter)
    rows = ["| data | preset | backbone | epochs | train s | eval s | image AUROC | pixel AUROC | image AP | "
            "pixel AP | AUPRO | F1-max |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for root in args.data:
        name = Path(root).name
        out = Path(args.out) / name
        t0 = time.perf_counter()
        train(root, out, model=model, train_cfg=TrainConfig(epochs=args.epochs, lr=args.lr), progress=False)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = evaluate_bundle(out, root, json_path=out / "metrics.json", progress=False)
        t_eval = time.perf_counter() - t0
        get = lambda k: f"{m[k]:.4f}" if isinstance(m.get(k), float) else "n/a"  # noqa: E731
        rows.append(f"| {name} | {args.preset}{' + jitter' if args.jitter else ''} | {model.backbone} | "
                    f"{args.epochs} | {t_train:.0f} | {t_eval:.0f} | {get('image_auroc')} | {get('pixel_auroc')} | "
                    f"{get('image_ap')} | {get('pixel_ap')} | {get('aupro')} | {get('image_f1_max')} |")
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, dict)}), flush=True)
    append_result("accuracy", "\n".join(rows))


if __name__ == "__main__":
    main()
