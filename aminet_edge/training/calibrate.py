"""Thresholds, and the guide map's weight, from held-out normal images only (no defect labels needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from aminet_edge.bundle import Calibration
from aminet_edge.config import ScoreConfig, TileConfig, uses_guide_map
from aminet_edge.data.datasets import Sample
from aminet_edge.evaluation.metrics import threshold_from_normal
from aminet_edge.model.pipeline import Pipeline
from aminet_edge.ops import reference


@torch.no_grad()
def guide_weight(pipeline: Pipeline, normals: Sequence[Sample], mean: Sequence[float], std: Sequence[float],
                 workers: int = 0, tile: TileConfig | None = None) -> float:
    """ScoreConfig.guide_weight of the "reconstruction+guide" map: the normal images' mean reconstruction
    map over their mean smoothed guide-distance map, so that both terms weigh alike on normal parts.
    The pipeline must hold the nearest-normal guide; runs on its device. tile: over the images' tiles."""
    from aminet_edge.data.batches import load_batches

    cfg, sigma = pipeline.aminet.cfg, pipeline.score.sigma
    hw = (cfg.image_size, cfg.image_size)
    device = pipeline.aminet.pos_embed.device
    rec_sum = guide_sum = 0.0
    for batch in load_batches([s.path for s in normals], cfg.image_size, mean, std, 8, workers, tile=tile):
        feat, recon, _, dist = pipeline.restore(batch.to(device))
        if dist is None:
            raise ValueError("the guide map's weight needs the nearest-normal guide")
        tokens = dist.reshape(-1, cfg.grid_size, cfg.grid_size)
        rec_sum += float(reference.score_map(feat, recon, hw, sigma)[0].double().mean(dim=(1, 2)).sum())
        guide_sum += float(reference.upsample_smooth(tokens, hw, sigma).double().mean(dim=(1, 2)).sum())
    if not guide_sum > 0:
        raise ValueError("the guide's distances are 0 on every normal image: its map cannot be weighted")
    return rec_sum / guide_sum


def calibrate_score(pipeline: Pipeline, normals: Sequence[Sample], mean: Sequence[float], std: Sequence[float],
                    workers: int = 0, tile: TileConfig | None = None) -> ScoreConfig:
    """The pipeline's ScoreConfig with guide_weight calibrated on `normals` (their tiles with `tile`) when
    its map adds the guide's distances (`guide_weight`), else unchanged; set on the pipeline too."""
    if uses_guide_map(pipeline.score.map):
        pipeline.score = dataclasses.replace(pipeline.score, guide_weight=guide_weight(pipeline, normals, mean,
                                                                                       std, workers, tile))
    return pipeline.score


def calibrate(pipeline: Pipeline, normals: Sequence[Sample], mean: Sequence[float], std: Sequence[float],
              held_out: bool, progress: bool = False, workers: int = 0, tile: TileConfig | None = None) -> Calibration:
    """Image threshold from normal image scores; pixel threshold from each normal map's maximum.

    Both use `threshold_from_normal`. held_out False (few-shot) means the images were also trained on.
    Runs on the pipeline's device; `workers` DataLoader processes decode the images. tile: the images
    are scored tiled (Pipeline.infer_tiled, the stitched maps at their own resolution), as a `Detector`
    of a bundle with this tiling scores them, so its thresholds mean the same thing.
    """
    scores, maps = pipeline.score_paths([s.path for s in normals], mean, std, progress=progress, workers=workers,
                                        tile=tile)
    peaks = np.array([m.max() for m in maps])
    flat = np.concatenate([np.ravel(m) for m in maps])
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
