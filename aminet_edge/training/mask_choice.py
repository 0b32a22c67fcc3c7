"""Training's choice of test-time mask and score map where they are "auto" (the defaults).

The nearest-normal guide with its score map beats the paper's adaptive mask on textures and does no harm
on bottle (BENCHMARKS.md, "Accuracy on MVTec bottle and magnetic tile"), but two of its parameters are
estimated from the held-out normal images: its threshold, the guide_quantile (0.95) of the held-out
tokens' distances to the bank, and its map's weight. MIN_GUIDE_HELD_OUT is the fewest held-out images
from which that threshold is stable: resampling k of magnetic tile's held-out images, the share of the
other held-out tokens masked by a threshold fitted on k images (target 5 %) has a 5-95 % range of
BENCHMARKS.md "Nearest-normal guide: held-out images" (bench/guide_holdout.py); below the minimum the
range widens fast, because the tokens of one image are correlated (its texture), so the sample is
images, not tokens. With fewer held-out images "auto" falls back to the paper's mask, which needs only
a mean and std of image scores (trainer.MIN_HOLDOUT images).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from aminet_edge.config import AUTO, ModelConfig, ScoreConfig, uses_guide_map

log = logging.getLogger("aminet_edge.training")
MIN_GUIDE_HELD_OUT = 20  # fewest held-out normal images for which "auto" picks the nearest-normal guide
GUIDE_MAP = "reconstruction+guide"


def choose_mask(model: ModelConfig, score: ScoreConfig, held_out: int) -> tuple[ModelConfig, ScoreConfig, str]:
    """Resolve "auto" in model.mask and score.map for a training that holds out `held_out` normal images:
    the guide ("nearest_normal", "reconstruction+guide") from MIN_GUIDE_HELD_OUT images on, else the
    paper's ("adaptive", "reconstruction"); an explicit value is kept (an explicit guide map takes the
    guide; "auto" map follows the mask). Returns both configs, resolved, and the reason, one line, e.g.
    "nearest-normal guide, score map reconstruction+guide (default: 66 held-out normal images >= 20)"."""
    mask, why = model.mask, "explicit mask"
    if mask == AUTO:
        if uses_guide_map(score.map):
            mask, why = "nearest_normal", f"explicit score map {score.map} needs it"
        elif held_out >= MIN_GUIDE_HELD_OUT:
            mask, why = "nearest_normal", f"default: {held_out} held-out normal images >= {MIN_GUIDE_HELD_OUT}"
        else:
            mask = "adaptive"
            why = (f"default: {held_out} held-out normal image{'s' if held_out != 1 else ''} < {MIN_GUIDE_HELD_OUT}; "
                   f"the guide's threshold (the held-out tokens' {model.guide_quantile:g} quantile of distance) "
                   f"and its map's weight need at least {MIN_GUIDE_HELD_OUT}")
    elif mask == "nearest_normal" and 0 < held_out < MIN_GUIDE_HELD_OUT:
        log.warning("nearest-normal guide from %d held-out normal images (< %d): its threshold may mask a share "
                    "of normal tokens far from the %g quantile's; hold out more images", held_out,
                    MIN_GUIDE_HELD_OUT, 1 - model.guide_quantile)
    score_map = score.map if score.map != AUTO else GUIDE_MAP if mask == "nearest_normal" else "reconstruction"
    return replace(model, mask=mask), replace(score, map=score_map), describe(mask, score_map, why)


def describe(mask: str, score_map: str, why: str) -> str:
    """config.json's train.mask_choice: which mask and map, and why, one line."""
    name = "nearest-normal guide" if mask == "nearest_normal" else "adaptive, the paper's"
    return f"{name}, score map {score_map} ({why})"
