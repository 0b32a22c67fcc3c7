"""Evaluate a bundle on a labelled test split: metrics, F1-optimal thresholds, heatmap overlays."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from aminet_edge.bundle import write_config
from aminet_edge.data.datasets import load_dataset
from aminet_edge.data.images import read_image, read_mask, resize_rgb
from aminet_edge.evaluation.heatmaps import save_overlay
from aminet_edge.evaluation.metrics import evaluate, f1_max

log = logging.getLogger("aminet_edge.evaluation")


def evaluate_bundle(bundle: str | Path, data: str | Path, json_path: str | Path | None = None,
                    heatmaps: str | Path | None = None, batch_size: int = 8, store_thresholds: bool = True,
                    progress: bool = True, device: str = "auto", workers: int = 0) -> dict:
    """Score `data`'s test split with the bundle and compute image/pixel metrics.

    Maps are compared with ground-truth masks at the model's input resolution (masks resized nearest).
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
    masks = np.stack([
        read_mask(s.mask_path, size) if s.mask_path else np.zeros((size, size), bool) for s in test])
    has_mask = np.array([s.label == 0 or s.mask_path is not None for s in test])
    metrics = evaluate(labels, scores, masks[has_mask], maps[has_mask], [s.defect_type for s in test],
                       pixel_rows=has_mask)
    metrics["images"] = int(len(test))
    if len(set(labels.tolist())) == 2:
        f1_img, thr_img = f1_max(labels, scores)
        f1_pix, thr_pix = f1_max(masks[has_mask].reshape(-1), maps[has_mask].reshape(-1))
        metrics["f1_thresholds"] = {"image": float(thr_img), "pixel": float(thr_pix)}
        if store_thresholds and config.calibration is not None:
            config.calibration = replace(config.calibration, f1_image_threshold=float(thr_img),
                                         f1_pixel_threshold=float(thr_pix))
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
