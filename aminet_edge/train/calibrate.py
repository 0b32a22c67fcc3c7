"""Thresholds from held-out normal images only (no defect labels needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aminet_edge.bundle import Calibration
from aminet_edge.data.datasets import Sample
from aminet_edge.evaluation.metrics import threshold_from_normal
from aminet_edge.model.pipeline import Pipeline


def calibrate(pipeline: Pipeline, normals: Sequence[Sample], mean: Sequence[float], std: Sequence[float],
              held_out: bool, progress: bool = False, workers: int = 0) -> Calibration:
    """Image threshold from normal image scores; pixel threshold from each normal map's maximum.

    Both use `threshold_from_normal`. held_out False (few-shot) means the images were also trained on.
    Runs on the pipeline's device; `workers` DataLoader processes decode the images.
    """
    scores, maps = pipeline.score_paths([s.path for s in normals], mean, std, progress=progress, workers=workers)
    peaks = maps.reshape(len(maps), -1).max(1)
    flat = maps.reshape(-1)
    return Calibration(
        image_threshold=float(threshold_from_normal(scores)),
        pixel_threshold=float(threshold_from_normal(peaks)),
        normal_image_scores={"mean": float(scores.mean()), "std": float(scores.std()),
                             "min": float(scores.min()), "max": float(scores.max()), "n": int(len(scores)),
                             "held_out": held_out},
        normal_pixel_stats={"mean": float(flat.mean()), "std": float(flat.std()),
                            "q999": float(np.quantile(flat, 0.999)), "max": float(flat.max())},
    )
