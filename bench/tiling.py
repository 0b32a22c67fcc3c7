"""Native-resolution tiling (config.TileConfig) against the whole image resized, on one data set.

Rows, all evaluated in this one run on the same test images (`evaluate_bundle`; pixel metrics at the
model's input size, as `aminet-edge evaluate` reports them):
- untiled: a bundle trained and evaluated on whole images resized to its input size (the default);
- untiled, scored tiled: the same bundle evaluated with --tile (a measurement: thresholds not used);
- tiled: a bundle trained with --tile and evaluated as it says;
- the kNN baseline of the same run (`evaluate --baseline knn`, on the untiled bundle's backbone).
Bundles are trained here (--preset, --epochs, --lr) unless given (--bundle, --tiled-bundle).
--elongate K first writes a data set of elongated images into --out: every K consecutive images of one
folder (train/good, test/<type>) side by side, their masks alike (an image without a mask: empty), so
that a defect is squashed K times more along the width when the whole image is resized.

Usage (the lead's long runs; a tiny check: --preset tiny --epochs 1 --image-size 64 --tile 64):
    python bench/tiling.py --data ../shared/data/mvtec_bottle --out runs/tiling_bottle --preset cpu \\
        --epochs 20 --lr 3e-4 --tile 256 --tile-overlap 64 [--elongate 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.config import PRESETS, TileConfig, TrainConfig  # noqa: E402
from aminet_edge.data.datasets import Sample, load_dataset  # noqa: E402
from aminet_edge.data.images import read_image, read_mask  # noqa: E402
from aminet_edge.evaluation.evaluate import evaluate_bundle  # noqa: E402


def _concat(images: list[np.ndarray]) -> np.ndarray:
    """Side by side, each resized (height kept) to the first one's height."""
    h = images[0].shape[0]
    out = []
    for im in images:
        if im.shape[0] != h:
            w = round(im.shape[1] * h / im.shape[0])
            im = np.asarray(Image.fromarray(im).resize((w, h), Image.NEAREST if im.dtype == bool else Image.BILINEAR))
        out.append(im)
    return np.concatenate(out, axis=1)


def elongate(data: Path, out: Path, k: int) -> Path:
    """An MVTec-layout data set of k-wide images from `data` (module docstring); returns its root."""
    split = load_dataset(data)
    groups: dict[tuple[str, str], list[Sample]] = {}
    for part, samples in (("train", split.train), ("test", split.test)):
        for s in samples:
            groups.setdefault((part, s.defect_type), []).append(s)
    for (part, kind), samples in groups.items():
        for g in range(len(samples) // k):
            chunk = samples[g * k:(g + 1) * k]
            rgb = _concat([(read_image(s.path) * 255).round().astype(np.uint8) for s in chunk])
            name = f"{g:03d}"
            (out / part / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(out / part / kind / f"{name}.png")
            if part == "test" and kind != "good":
                masks = [read_mask(s.mask_path) if s.mask_path else np.zeros(read_image(s.path).shape[:2], bool)
                         for s in chunk]
                (out / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                mask = Image.fromarray(_concat(masks).astype(np.uint8) * 255)
                mask.save(out / "ground_truth" / kind / f"{name}_mask.png")
    return out


def train_bundle(data: Path, out: Path, args: argparse.Namespace, tile: TileConfig | None) -> Path:
    from aminet_edge.training.trainer import train

    model = PRESETS[args.preset]
    if args.image_size:
        model = dataclasses.replace(model, image_size=args.image_size)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    return train(data, out, model=model, train_cfg=cfg, progress=False, device=args.device, tile=tile,
                 workers=args.workers)


def row(name: str, metrics: dict, seconds: float | None) -> str:
    cells = [metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")]
    text = " | ".join("-" if v is None else f"{v:.4f}" for v in cells)
    return f"| {name} | {text} | {'-' if seconds is None else f'{seconds:.0f}'} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="bundles (and the elongated data set) go here")
    ap.add_argument("--bundle", type=Path, help="an untiled bundle trained on --data (else trained here)")
    ap.add_argument("--tiled-bundle", type=Path, help="a bundle trained with this tiling (else trained here)")
    ap.add_argument("--tile", type=int, required=True)
    ap.add_argument("--tile-overlap", type=int)
    ap.add_argument("--elongate", type=int, default=1, help="K images side by side (1: the data as it is)")
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    tile = TileConfig(args.tile, args.tile // 4 if args.tile_overlap is None else args.tile_overlap)
    tile.validate()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data if args.elongate == 1 else elongate(args.data, args.out / f"data_x{args.elongate}", args.elongate)
    if args.elongate > 1 and (args.bundle or args.tiled_bundle):
        sys.exit("--elongate trains its own bundles on the elongated images: leave out --bundle / --tiled-bundle")
    lines, timing = [], {}
    t = time.perf_counter()
    plain = args.bundle or train_bundle(data, args.out / "untiled", args, None)
    timing["train untiled"] = time.perf_counter() - t
    t = time.perf_counter()
    tiled = args.tiled_bundle or train_bundle(data, args.out / "tiled", args, tile)
    timing["train tiled"] = time.perf_counter() - t
    ev = dict(progress=False, device=args.device, store_thresholds=False, workers=args.workers)
    t = time.perf_counter()
    base = evaluate_bundle(plain, data, baseline="knn", tile=None, **ev)
    lines.append(row("untiled (whole image resized)", base, time.perf_counter() - t))
    t = time.perf_counter()
    lines.append(row(f"untiled bundle, scored in {tile.size} px tiles", evaluate_bundle(plain, data, tile=tile, **ev),
                     time.perf_counter() - t))
    t = time.perf_counter()
    lines.append(row(f"trained and scored in {tile.size} px tiles", evaluate_bundle(tiled, data, tile="bundle", **ev),
                     time.perf_counter() - t))
    lines.append(row("kNN baseline (same run)", base["baseline_knn"], None))
    sample = load_dataset(data).test[0].path
    with Image.open(sample) as im:
        size = f"{im.width} x {im.height}"
    table = (f"Tiling on {args.data.name}{f' x{args.elongate} side by side' if args.elongate > 1 else ''} "
             f"(test images {size} px), preset {args.preset}, {args.epochs} epochs, tile {tile.size} px, overlap "
             f"{tile.overlap} px; training {timing['train untiled']:.0f} s untiled, {timing['train tiled']:.0f} s "
             "tiled\n\n| configuration | image AUROC | pixel AUROC | AUPRO | evaluate s |\n|---|---|---|---|---|\n"
             + "\n".join(lines))
    append_result("tiling", table)


if __name__ == "__main__":
    main()
