"""Build the nearest-normal guide (aminet_edge/model/guide.py) from normal images, and switch a trained
bundle's test-time mask (`aminet-edge set-mask`) without retraining: the mask does not change training.

Bank: every training token's pooled backbone feature, or, beyond `guide_bank_size` tokens, a greedy
k-centre coreset of them (PatchCore's selection, here in a seeded 32-d random projection), projected to
their `guide_dims` principal axes (PCA of all training tokens; 0: every channel). Threshold: the
`guide_quantile` of the held-out normal tokens' distances to the bank (label-free).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aminet_edge.config import MASKS, ModelConfig, TileConfig
from aminet_edge.evaluation.knn_baseline import nearest_distance
from aminet_edge.model.features import FeatureExtractor
from aminet_edge.model.guide import NearestNormalGuide, token_features

log = logging.getLogger("aminet_edge.training")
PROJECTION_DIM = 32  # coreset selection runs in a random projection of this width
FEATURE_CHUNK = 32  # images pooled / searched per step (bounds the (chunk * L, M) distance block)


def greedy_coreset(points: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices (size,) int64 of a greedy k-centre subset of points (N, C): start at row 0, then repeatedly
    add the row furthest from every row added so far, distances measured in a seeded Gaussian projection
    to PROJECTION_DIM dimensions (all of them when C is smaller). size >= N returns every index."""
    n = len(points)
    if size >= n:
        return torch.arange(n)
    x = points.float()
    if x.shape[1] > PROJECTION_DIM:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        proj = torch.randn(x.shape[1], PROJECTION_DIM, generator=gen) / PROJECTION_DIM**0.5
        x = x @ proj.to(x.device)
    x = x.contiguous()
    sq = (x * x).sum(1)
    picked = torch.empty(size, dtype=torch.int64)
    nearest = torch.full((n,), float("inf"), device=x.device)
    i = 0
    for j in range(size):
        picked[j] = i
        # ||x - x_i||^2 as ||x||^2 - 2 x.x_i + ||x_i||^2: one matrix-vector product, no (N, d) temporary
        # (10x faster on a CPU); its float32 rounding only matters between near-equal candidates
        torch.minimum(nearest, torch.addmv(sq, x, x[i], alpha=-2.0) + sq[i], out=nearest)
        i = int(nearest.argmax())
    return picked


def pca_projection(tokens: torch.Tensor, dims: int) -> torch.Tensor:
    """(C, dims) float32 on the CPU: the `dims` principal axes of tokens (N, C), largest variance first (their
    float64 covariance's eigenvectors, computed on the CPU so that every device gives the same axes; each
    axis signed so that its largest component is positive)."""
    x = tokens.detach().cpu().double()
    x = x - x.mean(0)
    _, vecs = torch.linalg.eigh(x.T @ x / len(x))
    axes = vecs[:, -dims:].flip(1)
    sign = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return (axes * sign).float().contiguous()


def pooled_tokens(feature_batches: Iterable[torch.Tensor], patch_size: int) -> torch.Tensor:
    """Every token's pooled feature (N * L, C) float32 from batches of backbone features (B, C, h, w)."""
    parts = [token_features(f, patch_size).reshape(-1, f.shape[1]) for f in feature_batches]
    return torch.cat(parts)


def image_tokens(extractor: FeatureExtractor, paths: Sequence[str | Path], model: ModelConfig, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, workers: int = 0,
                 tile: TileConfig | None = None) -> torch.Tensor:
    """`pooled_tokens` of the backbone features of image files (normalised with mean / std; their tiles
    with `tile`), on `device`: (N * L, C) float32 (N images or tiles; 0: (0, C))."""
    from aminet_edge.data.batches import load_batches

    with torch.no_grad():
        batches = (extractor(b.to(device)) for b in load_batches(
            paths, model.image_size, mean, std, FEATURE_CHUNK, workers, tile=tile))
        return pooled_tokens(batches, model.patch_size) if paths else torch.empty(0, extractor.channels, device=device)


def build_guide(fit_tokens: torch.Tensor, held_tokens: torch.Tensor, model: ModelConfig,
                seed: int = 0) -> tuple[NearestNormalGuide, dict[str, Any]]:
    """The guide from pooled training tokens (N, C) (the bank's source) and held-out normal tokens (H, C)
    (the threshold's). Returns the guide and a JSON-ready summary (bank size, source tokens, threshold,
    share of held-out tokens masked). ValueError without held-out tokens."""
    if len(held_tokens) == 0:
        raise ValueError("the nearest-normal mask needs held-out normal images for its threshold "
                         "(at least 10 training images and holdout_fraction > 0)")
    keep = greedy_coreset(fit_tokens, model.guide_bank_size, seed)
    channels = fit_tokens.shape[1]
    proj = pca_projection(fit_tokens, model.guide_dims) if model.guide_columns(channels) < channels else None
    bank = fit_tokens[keep.to(fit_tokens.device)]
    if proj is not None:
        proj = proj.to(fit_tokens.device)
        bank, held_tokens = bank @ proj, held_tokens @ proj
    bank = bank.half()  # as the guide stores it: the threshold sees the same bank
    held = nearest_distance(held_tokens, bank)
    threshold = float(np.quantile(held.double().cpu().numpy(), model.guide_quantile))
    guide = NearestNormalGuide(bank.cpu(), threshold, model.patch_size, None if proj is None else proj.cpu())
    summary = {"bank_tokens": len(bank), "training_tokens": len(fit_tokens), "dims": bank.shape[1],
               "channels": channels, "threshold": threshold, "quantile": model.guide_quantile,
               "held_out_masked": float((held > guide.threshold).float().mean())}
    log.info("nearest-normal guide: bank %d of %d training tokens x %d of %d dims, threshold %.4g (held-out "
             "quantile %g)", len(bank), len(fit_tokens), bank.shape[1], channels, threshold, model.guide_quantile)
    return guide, summary


def set_mask(bundle: str | Path, data: Sequence[str | Path], mask: str, quantile: float | None = None,
             bank_size: int | None = None, device: str = "auto", progress: bool = False, workers: int = 0,
             score_map: str | None = None, dims: int | None = None) -> Path:
    """Switch the bundle's test-time mask to `mask` ("adaptive" or "nearest_normal") and score map to
    `score_map` (ScoreConfig.map; None: the bundle's, or "reconstruction" where the mask no longer allows
    it), and re-calibrate the thresholds (and the guide map's weight) on the held-out normal images, the
    network weights unchanged.

    data: the data set root(s) the bundle was trained on (its training split is re-derived from them and
    each image must match the sha256 recorded at training: trainer.recorded_split). The guide's bank and
    threshold are rebuilt for "nearest_normal" (kept when the bundle has the guide already and quantile /
    bank_size / dims, which override its guide_quantile / guide_bank_size / guide_dims, do not change them). The
    bundle is rewritten crash-safely (pipeline.save_bundle); its graphs and engines, which hold the old mask
    or map, are deleted once the new config.json is in place: export again. Returns the bundle path.
    """
    from aminet_edge.device import resolve_device
    from aminet_edge.model.pipeline import load_pipeline, save_bundle
    from aminet_edge.training.calibrate import calibrate, calibrate_score
    from aminet_edge.training.mask_choice import describe
    from aminet_edge.training.trainer import recorded_split

    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    pipeline, config = load_pipeline(bundle)
    tr = config.train
    fit, held = recorded_split(bundle, tr, data)
    overrides: dict[str, Any] = {k: v for k, v in (("guide_quantile", quantile), ("guide_bank_size", bank_size),
                                                   ("guide_dims", dims)) if v is not None}
    model = replace(config.model, mask=mask, **overrides)
    model.validate()
    if score_map is None:
        score_map = config.score.map if mask == "nearest_normal" else "reconstruction"
    score = replace(config.score, map=score_map, guide_weight=0.0)
    score.validate(mask, calibrated=False)
    dev = resolve_device(device)
    pipeline.to(dev)
    guide, summary = pipeline.guide, tr.get("guide")
    if mask != "nearest_normal":
        guide, summary = None, None
    elif guide is None or model != replace(config.model, mask=mask):  # no guide yet, or other quantile / bank
        fit_tokens, held_tokens = (image_tokens(pipeline.extractor, [s.path for s in part], model, config.mean,
                                                config.std, dev, workers, config.tile) for part in (fit, held))
        guide, summary = build_guide(fit_tokens, held_tokens, model, tr["seed"])
    else:
        log.info("nearest-normal guide kept (bank %d tokens, threshold %.4g)", len(guide.bank), float(guide.threshold))
    pipeline.guide = None if guide is None else guide.to(dev)
    pipeline.aminet.cfg = model
    pipeline.score = score
    config.model = model
    config.score = calibrate_score(pipeline, held, config.mean, config.std, workers, config.tile)
    config.calibration = calibrate(pipeline, held or fit, config.mean, config.std, held_out=bool(held),
                                   progress=progress, workers=workers, tile=config.tile)
    choice = describe(mask, config.score.map, "set with `aminet-edge set-mask`")
    config.train = {k: v for k, v in tr.items() if k != "guide"} | {"mask_choice": choice} | (
        {"guide": summary} if summary else {})
    return save_bundle(bundle, config, pipeline.extractor.cpu(), pipeline.aminet.cpu(),
                       None if guide is None else guide.cpu())
