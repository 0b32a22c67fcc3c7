"""Does the test-time mask (adaptive, or the nearest-normal guide) cover the defects? Mask recall and
the share of normal tokens masked.

AMI-Net removes a defect from its restoration only where the test-time mask hides the defect's tokens:
a defect token left visible is inpainted as itself and fades from the score map. These numbers test
that premise on labelled test images.

Token labels come from the ground-truth pixel mask resized to the model input (S x S pixels) and the
token grid (g x g tokens, each S/g x S/g pixels, row-major as the model's tokens):
- defect token: at least DEFECT_TOKEN_FRACTION of its pixels are defect pixels;
- normal token: none of its pixels is a defect pixel;
- a token with a few defect pixels (above 0, below the fraction) is neither and is left out.

Reported (each a pooled share over all tokens of that kind, not a mean of per-image shares):
- mask_recall: masked defect tokens / defect tokens, per defect type and over all defective images;
- normal_masked_share: masked tokens / tokens on normal test images;
- normal_region_masked_share: masked normal tokens / normal tokens on the defective images of a type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFECT_TOKEN_FRACTION = 0.05  # at 256 px a token is 16 x 16 px: a 1-px line right across it (6.25 %) counts,
# a defect that only touches a corner does not


def token_defect_fraction(masks: np.ndarray, grid: int) -> np.ndarray:
    """Share of defect pixels in each token: masks (N, S, S) bool -> (N, grid * grid) float64.

    Token t = row * grid + col covers pixels [row * S / grid, (row + 1) * S / grid) x the same for col.
    """
    masks = np.asarray(masks, bool)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or masks.shape[1] % grid:
        raise ValueError(f"masks must be (N, S, S) with S a multiple of the token grid {grid}, got {masks.shape}")
    n, s = masks.shape[0], masks.shape[1]
    k = s // grid
    return masks.reshape(n, grid, k, grid, k).mean(axis=(2, 4), dtype=np.float64).reshape(n, grid * grid)


def _share(masked: np.ndarray, selected: np.ndarray) -> dict[str, float | int | None]:
    count = int(selected.sum())
    return {"share": float(masked[selected].mean()) if count else None, "tokens": count}


def mask_coverage(token_masks: np.ndarray, pixel_masks: np.ndarray, labels: np.ndarray,
                  defect_types: Sequence[str], fraction: float = DEFECT_TOKEN_FRACTION) -> dict:
    """Mask recall and normal-token masking of the test-time mask on labelled images.

    token_masks: (N, L) bool, True = masked (to be inpainted); pixel_masks: (N, S, S) bool ground
    truth at model resolution (all False on normal images); labels: (N,) 0/1; defect_types: N names.
    Pass only images with pixel labels (normal ones, and defective ones with a mask file).
    Returns {"defect_token_fraction", "mask_recall", "defect_tokens", "normal_masked_share",
    "normal_tokens", "normal_region_masked_share", "per_type": {type: same keys without normal_*}};
    a share is None when it has no tokens.
    """
    token_masks = np.asarray(token_masks, bool)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    types = np.asarray(list(defect_types), dtype=object)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if token_masks.ndim != 2 or not len(token_masks) == len(pixel_masks) == labels.size == types.size:
        raise ValueError(f"token_masks (N, L), pixel_masks (N, S, S), labels and defect_types must agree in N; "
                         f"got {token_masks.shape}, {np.shape(pixel_masks)}, {labels.size}, {types.size}")
    grid = int(round(token_masks.shape[1] ** 0.5))
    if grid * grid != token_masks.shape[1]:
        raise ValueError(f"token_masks must hold a square grid of tokens, got L={token_masks.shape[1]}")
    frac = token_defect_fraction(pixel_masks, grid)
    defect = (frac >= fraction) & labels[:, None]
    clean = frac == 0

    def on(rows: np.ndarray) -> dict[str, float | int | None]:
        recall, region = _share(token_masks, defect & rows[:, None]), _share(token_masks, clean & rows[:, None])
        return {"mask_recall": recall["share"], "defect_tokens": recall["tokens"],
                "normal_region_masked_share": region["share"], "normal_region_tokens": region["tokens"]}

    normal = _share(token_masks, np.broadcast_to(~labels[:, None], token_masks.shape))
    return {"defect_token_fraction": fraction, **on(labels),
            "normal_masked_share": normal["share"], "normal_tokens": normal["tokens"],
            "per_type": {kind: on(labels & (types == kind)) for kind in sorted(set(types[labels]))}}
