"""Thresholds from held-out normal images only (no defect labels needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from aminet_edge.bundle import Calibration
from aminet_edge.data.datasets import Sample
from aminet_edge.evaluation.metrics import threshold_from_normal
from aminet_edge.model.pipeline import Pipeline
from aminet_edge.ops import reference


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


def mask_lambda_for_share(tokens: torch.Tensor, centers: torch.Tensor, share: float, lo: float = -8.0,
                          hi: float = 8.0, steps: int = 40) -> float:
    """The mask threshold lambda at which the adaptive mask masks `share` of the given tokens.

    tokens (N, L, D) and centers (N, P, D): the clustering tokens and centres of held-out normal images
    (`AMINet.cluster`). The masked share falls as lambda grows; bisection over [lo, hi] on the
    reference op itself (so the runtime's masks follow exactly) returns the smallest lambda found whose
    share is at most `share` (to within (hi - lo) / 2**steps).
    """
    if not 0 < share < 1:
        raise ValueError(f"target masked share must be in (0, 1), got {share}")
    allowed = share * tokens.shape[0] * tokens.shape[1]  # counts, not a float32 mean: exact at the bound

    def too_many(lam: float) -> bool:
        return int(reference.adaptive_mask(tokens, centers, lam)[0].sum()) > allowed

    if too_many(hi):
        raise ValueError(f"even lambda={hi} masks more than {share:.0%} of the normal tokens")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if too_many(mid) else (lo, mid)
    return hi
