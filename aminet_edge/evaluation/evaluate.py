"""Evaluate a bundle on a labelled test split: metrics, F1-optimal thresholds, heatmap overlays."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from aminet_edge.bundle import write_config
from aminet_edge.data.datasets import Sample, load_dataset
from aminet_edge.data.images import read_image, read_mask, resize_rgb
from aminet_edge.evaluation.heatmaps import save_overlay
from aminet_edge.evaluation.metrics import evaluate, f1_max

log = logging.getLogger("aminet_edge.evaluation")


def _test_mask(sample: Sample, size: int) -> np.ndarray:
    """The sample's ground-truth mask (size, size) bool (nearest resize); all False without a mask file.
    ValueError when the mask and its image differ in size."""
    if sample.mask_path is None:
        return np.zeros((size, size), bool)
    mask = read_mask(sample.mask_path, size)
    with Image.open(sample.path) as image, Image.open(sample.mask_path) as m:
        if image.size != m.size:
            raise ValueError(f"{sample.mask_path}: mask is {m.size[0]}x{m.size[1]} px but its image {sample.path} "
                             f"is {image.size[0]}x{image.size[1]} px, so they are not pixel-aligned; give each "
                             "image a mask of its own size")
    return mask


def evaluate_bundle(bundle: str | Path, data: str | Path, json_path: str | Path | None = None,
                    heatmaps: str | Path | None = None, batch_size: int = 8, store_thresholds: bool = True,
                    progress: bool = True, device: str = "auto", workers: int = 0) -> dict:
    """Score `data`'s test split with the bundle and compute image/pixel metrics.

    Maps are compared with ground-truth masks at the model's input resolution (masks resized nearest).
    A mask whose size differs from its image's is refused (ValueError naming both): the pair is not
    pixel-aligned (a wrong file or a processed copy), and resizing it would make the pixel metrics and
    the stored pixel threshold silently wrong. Without any defect masks the image metrics are still
    reported and "pixel_note" says that pixel metrics need masks.
    With store_thresholds, the F1-optimal image and pixel thresholds are written into the bundle's
    calibration (the normal-only thresholds stay the default). Returns the metrics dict.
    device: "auto" (first CUDA GPU, else CPU), "cpu", "cuda" or "cuda:N"; the model runs there in
    float32, as at calibration. workers: DataLoader processes decoding the images.
    """
    from aminet_edge.device import describe_device, resolve_device
    from aminet_edge.model.pipeline import load_pipeline

    dev = resolve_device(device)
    pipeline, config = load_pipeline(bundle)
    test = load_dataset(data).test
    if not test:
        raise ValueError(f"{data}: no test images found")
    log.info("evaluating on %s", describe_device(dev))
    size = config.model.image_size
    scores, maps = pipeline.to(dev).score_paths([s.path for s in test], config.mean, config.std, batch_size,
                                                progress, workers)
    labels = np.array([s.label for s in test], dtype=np.int64)
    masks = np.stack([_test_mask(s, size) for s in test])
    has_mask = np.array([s.label == 0 or s.mask_path is not None for s in test])
    metrics = evaluate(labels, scores, masks[has_mask], maps[has_mask], [s.defect_type for s in test],
                       pixel_rows=has_mask)
    metrics["images"] = int(len(test))
    missing = int(sum(s.label == 1 and s.mask_path is None for s in test))
    if missing:
        metrics["pixel_note"] = (f"pixel metrics need ground-truth masks: {missing} of {int(labels.sum())} "
                                 "defective test image(s) have none" + ("" if "pixel_auroc" not in metrics
                                                                        else " (pixel metrics use the others)"))
    if len(set(labels.tolist())) == 2:
        thresholds = {"image": f1_max(labels, scores)[1]}
        pixel_labels = masks[has_mask]
        if pixel_labels.any() and not pixel_labels.all():
            thresholds["pixel"] = f1_max(pixel_labels.reshape(-1), maps[has_mask].reshape(-1))[1]
        metrics["f1_thresholds"] = thresholds
        if store_thresholds and config.calibration is not None:
            config.calibration = replace(config.calibration, f1_image_threshold=thresholds["image"],
                                         f1_pixel_threshold=thresholds.get("pixel"))
            write_config(bundle, config)
    if heatmaps is not None:
        out = Path(heatmaps)
        out.mkdir(parents=True, exist_ok=True)
        cal = config.calibration
        vmax = float(np.quantile(maps, 0.999))
        for s, amap, m in tqdm(list(zip(test, maps, masks)), desc="heatmaps", disable=not progress):
            image = resize_rgb(read_image(s.path), size)
            pred = amap > cal.pixel_threshold if cal is not None else None
            save_overlay(out / f"{s.defect_type}_{Path(s.path).stem}.png", image, amap,
                         m if s.mask_path else None, vmin=0.0, vmax=vmax, pred_mask=pred)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
