"""Evaluate a bundle on a labelled test split: metrics, F1-optimal thresholds, heatmap overlays."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from aminet_edge.bundle import BundleConfig, read_config, refuse_output_overlap, write_config
from aminet_edge.config import TileConfig, to_dict
from aminet_edge.files import atomic_write_text
from aminet_edge.data.datasets import Sample, Split, load_dataset
from aminet_edge.data.images import read_image, read_mask, resize_rgb
from aminet_edge.evaluation.heatmaps import save_overlay
from aminet_edge.evaluation.mask_coverage import mask_coverage
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


if TYPE_CHECKING:
    from aminet_edge.model.pipeline import Pipeline

BASELINES = ("knn",)


def evaluate_bundle(bundle: str | Path, data: str | Path, json_path: str | Path | None = None,
                    heatmaps: str | Path | None = None, batch_size: int = 8, store_thresholds: bool = True,
                    progress: bool = True, device: str = "auto", workers: int = 0, baseline: str | None = None,
                    bank_cap: int | None = None, tile: str | TileConfig | None = "bundle") -> dict:
    """Score `data`'s test split with the bundle and compute image/pixel metrics.

    Maps are compared with ground-truth masks at the model's input resolution (masks resized nearest).
    A mask whose size differs from its image's is refused (ValueError naming both): the pair is not
    pixel-aligned (a wrong file or a processed copy), and resizing it would make the pixel metrics and
    the stored pixel threshold silently wrong. Without any defect masks the image metrics are still
    reported and "pixel_note" says that pixel metrics need masks.
    With store_thresholds, the F1-optimal image and pixel thresholds are written into the bundle's
    calibration (the normal-only thresholds stay the default). Where masks exist, "mask_coverage" says
    how well the test-time mask covers the defects (see `mask_coverage`). baseline "knn" adds
    "baseline_knn": the same metrics for the nearest-neighbour baseline on the bundle's backbone, its
    memory bank from `data`'s training images, at most `bank_cap` patches (None: knn_baseline.BANK_CAP).
    device: "auto" (first CUDA GPU, else CPU), "cpu", "cuda" or "cuda:N"; the model runs there in
    float32, as at calibration. workers: DataLoader processes decoding the images. Returns the metrics dict.
    tile: "bundle" (config.json's tiling), None (untiled) or a TileConfig. Tiled, each image is scored at
    its own resolution (Pipeline.infer_tiled) and its stitched map resized to the model's input size for
    the pixel metrics; "mask_coverage" is left out (the token masks are per tile). A tiling other than the
    bundle's is a measurement only: AUROC / AUPRO do not depend on thresholds, but the bundle's thresholds
    were calibrated otherwise, so no F1 thresholds are stored and "tile_note" says so.
    """
    from aminet_edge.device import describe_device, resolve_device
    from aminet_edge.model.pipeline import load_pipeline

    dev = resolve_device(device)
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
    if json_path is not None:
        refuse_output_overlap(bundle, json_path, "--json", "file")
    if heatmaps is not None:
        refuse_output_overlap(bundle, heatmaps, "--heatmaps")
        root, out = Path(data).resolve(), Path(heatmaps).resolve()
        if out == root or root in out.parents:  # its PNGs would be read as images of the data set next time
            raise ValueError(f"{heatmaps}: --heatmaps lies in the data set {data}, whose next evaluation would read "
                             "the heatmaps as test images; choose a folder outside it")
    pipeline, config = load_pipeline(bundle)
    split = load_dataset(data)
    test = split.test
    if not test:
        raise ValueError(f"{data}: no test images found")
    log.info("evaluating on %s", describe_device(dev))
    size = config.model.image_size
    tiling = config.tile if tile == "bundle" else tile
    if isinstance(tiling, str):
        raise ValueError(f"tile must be 'bundle', None or a TileConfig, got {tiling!r}")
    if tiling is None:
        scores, maps, token_masks = pipeline.to(dev).infer_paths([s.path for s in test], config.mean, config.std,
                                                                 batch_size, progress, workers)
    else:
        tiling.validate()
        scores, tiled_maps, _ = pipeline.to(dev).infer_tiled([s.path for s in test], config.mean, config.std, tiling,
                                                             batch_size, progress, workers, map_size=size)
        maps = np.stack(tiled_maps)
    labels = np.array([s.label for s in test], dtype=np.int64)
    masks = np.stack([_test_mask(s, size) for s in test])
    has_mask = np.array([s.label == 0 or s.mask_path is not None for s in test])
    metrics = evaluate(labels, scores, masks[has_mask], maps[has_mask], [s.defect_type for s in test],
                       pixel_rows=has_mask)
    metrics["images"] = int(len(test))
    metrics["mask"], metrics["score_map"] = config.model.mask, config.score.map
    metrics["tile"] = None if tiling is None else to_dict(tiling)
    if tiling != config.tile:
        store_thresholds = False
        metrics["tile_note"] = (f"scored with tiling {metrics['tile'] or 'off'} but the bundle's thresholds were "
                                f"calibrated with {to_dict(config.tile) if config.tile else 'tiling off'}: they do "
                                "not apply to these scores (AUROC / AUPRO do not depend on them); F1 thresholds "
                                "not stored")
    missing = int(sum(s.label == 1 and s.mask_path is None for s in test))
    if missing:
        metrics["pixel_note"] = (f"pixel metrics need ground-truth masks: {missing} of {int(labels.sum())} "
                                 "defective test image(s) have none" + ("" if "pixel_auroc" not in metrics
                                                                        else " (pixel metrics use the others)"))
    coverage = None if tiling is not None else _mask_coverage(test, token_masks, masks, has_mask)
    if coverage is not None:
        metrics["mask_coverage"] = coverage
    if baseline == "knn":
        metrics["baseline_knn"] = _knn_baseline(pipeline, config, split, masks, has_mask, bank_cap, batch_size,
                                                progress)
    if len(set(labels.tolist())) == 2:
        thresholds = {"image": f1_max(labels, scores)[1]}
        pixel_labels = masks[has_mask]
        if pixel_labels.any() and not pixel_labels.all():
            thresholds["pixel"] = f1_max(pixel_labels.reshape(-1), maps[has_mask].reshape(-1))[1]
        metrics["f1_thresholds"] = thresholds
        if store_thresholds and config.calibration is not None:
            _store_f1_thresholds(bundle, config, thresholds)
    if heatmaps is not None:
        out = Path(heatmaps)
        out.mkdir(parents=True, exist_ok=True)
        cal = config.calibration if tiling == config.tile else None  # thresholds of other maps: no prediction
        vmax = float(np.quantile(maps, 0.999))
        for s, amap, m in tqdm(list(zip(test, maps, masks)), desc="heatmaps", disable=not progress):
            image = resize_rgb(read_image(s.path), size)
            pred = amap > cal.pixel_threshold if cal is not None else None
            save_overlay(out / f"{s.defect_type}_{Path(s.path).stem}.png", image, amap,
                         m if s.mask_path else None, vmin=0.0, vmax=vmax, pred_mask=pred)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _store_f1_thresholds(bundle: str | Path, evaluated: BundleConfig, thresholds: dict[str, float]) -> None:
    """Record the F1 thresholds in the bundle's config.json as it is now (an export or engine build that
    ran meanwhile keeps its records), unless what was evaluated changed meanwhile (weights, model, score or
    calibration: retrained, set-mask or edited), where they would belong to another model (logged)."""
    def decided(config: BundleConfig) -> tuple:  # what the thresholds belong to (an earlier F1 store aside)
        cal = config.calibration and replace(config.calibration, f1_image_threshold=None, f1_pixel_threshold=None)
        return config.artifacts.get("weights"), config.model, config.score, cal

    current = read_config(bundle)
    if current.calibration is None or decided(current) != decided(evaluated):
        log.warning("%s changed while it was evaluated (retrained, set-mask or config.json edited): the F1 "
                    "thresholds were not stored; evaluate it again", bundle)
        return
    current.calibration = replace(current.calibration, f1_image_threshold=thresholds["image"],
                                  f1_pixel_threshold=thresholds.get("pixel"))
    write_config(bundle, current)


def _mask_coverage(test: list[Sample], token_masks: np.ndarray, masks: np.ndarray,
                   has_mask: np.ndarray) -> dict | None:
    """`mask_coverage` on the test images with pixel labels; None when no image has defect pixels."""
    if not masks[has_mask].any():
        return None
    keep = np.flatnonzero(has_mask)
    return mask_coverage(token_masks[keep], masks[keep], np.array([test[i].label for i in keep]),
                         [test[i].defect_type for i in keep])


def _knn_baseline(pipeline: Pipeline, config: BundleConfig, split: Split, masks: np.ndarray, has_mask: np.ndarray,
                  bank_cap: int | None, batch_size: int, progress: bool) -> dict:
    """Metrics of the kNN baseline (`knn_baseline`) on the same test images, with its bank's size."""
    from aminet_edge.evaluation.knn_baseline import BANK_CAP, build_bank, knn_scores

    bank_cap = BANK_CAP if bank_cap is None else bank_cap
    size = config.model.image_size
    bank, total = build_bank(pipeline.extractor, [s.path for s in split.train], size, config.mean, config.std,
                             bank_cap, batch_size=batch_size, progress=progress)
    scores, maps = knn_scores(pipeline.extractor, bank, [s.path for s in split.test], size, config.mean,
                              config.std, config.score.sigma, batch_size, progress)
    test = split.test
    metrics = evaluate(np.array([s.label for s in test]), scores, masks[has_mask], maps[has_mask],
                       [s.defect_type for s in test], pixel_rows=has_mask)
    metrics.update({"bank_patches": int(len(bank)), "train_patches": int(total), "bank_cap": int(bank_cap),
                    "image_score": "max"})
    return metrics
