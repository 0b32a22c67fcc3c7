"""Training's choice of test-time mask and score map where they are "auto" (the defaults).

The nearest-normal guide with its score map beats the paper's adaptive mask on textures and does no harm
on bottle (BENCHMARKS.md, "Accuracy on MVTec bottle and magnetic tile"), but two of its parameters are
estimated from the held-out normal images: its threshold, the guide_quantile (0.95) of the held-out
tokens' distances to the bank, and its map's weight. MIN_GUIDE_HELD_OUT is the fewest held-out images
from which that threshold is stable. Measured by resampling k of magnetic tile's 76 held-out images (cpu
preset, 256 tokens each; bench/guide_bank.py --holdout-study, 200 draws): the share of the other
held-out images' tokens that a threshold fitted on k images masks (target 5 %), median and 5-95 % range,
is 6.7 % (0.5-16.7 %) at k = 3, 6.5 % (1.1-12.4 %) at 5, 5.6 % (2.1-9.6 %) at 10, 5.0 % (2.7-9.2 %) at 20
and 5.0 % (2.8-8.2 %) at 30; the threshold's relative spread is 9 %, 4 % and 2.6 % at 3, 10 and 20. From
20 images on the median is on target and the range within a factor 2 of it; more images barely narrow it
(the other images differ among themselves), fewer bias the threshold low and widen the range fast: one
image's tokens are correlated (its texture), so the sample size is images, not tokens. The map's weight, a
ratio of mean maps over the same images, deviates from the all-images weight by 24 % on average at 5
images, 12 % at 20 and 10 % at 30 (bench/results/textures.md). With fewer held-out images
"auto" falls back to the paper's mask, whose thresholds need only a mean and std of image scores
(trainer.MIN_HOLDOUT images).
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
