"""Nearest-normal guide: this project's test-time mask (ModelConfig.mask = "nearest_normal"), not the paper's.

A token is masked when its backbone feature (the mean over its K x K feature cells) is further from every
token of a bank of normal training tokens than `threshold`, the held-out normal tokens' `guide_quantile`
of the same distance (aminet_edge.training.guide builds both). On magnetic tile the paper's clustering mask
leaves large low-contrast defects visible, so they are inpainted as themselves; this mask finds them
(BENCHMARKS.md, "Test-time masks on textures"). Deterministic, label-free; exported as a matrix product,
ArgMin, Gather and a norm, the bank a graph input (export/graph_io.py: a bundle holds it once, in its
weights file).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.ops import reference


def token_features(feat: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each token's backbone feature, the mean over its K x K cells: (B, C, h, w) -> (B, L, C) float32,
    tokens in the row-major order of AMINet.patchify."""
    return F.avg_pool2d(feat.float(), patch_size).flatten(2).transpose(1, 2)


class NearestNormalGuide(nn.Module):
    """Mask from the distance to a bank of normal token features.

    bank: (M, C) float16 (rounded as stored in the bundle; the distances are computed in float32);
    threshold: () float32, in the features' units. Both are buffers, so they travel in the bundle's
    weights file (under "guide.") and are recorded by its checksum.
    """

    bank: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, bank: torch.Tensor, threshold: float | torch.Tensor, patch_size: int) -> None:
        super().__init__()
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"the guide's bank must be a non-empty (M, C) matrix, got shape {tuple(bank.shape)}")
        threshold = torch.as_tensor(threshold, dtype=torch.float32).reshape(())
        if not (torch.isfinite(threshold) and threshold > 0):
            raise ValueError(f"the guide's threshold must be a finite number > 0, got {float(threshold)}")
        self.register_buffer("bank", bank.detach().to(torch.float16).contiguous())
        self.register_buffer("threshold", threshold.clone())
        self.patch_size = patch_size

    def distance(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's distance to the nearest bank token: features (B, C, h, w) -> (B, L) float32.
        bank: (M, C) in place of the buffer (the exported single graph's input: the buffer's values as float32)."""
        return reference.nearest_distance(token_features(feat, self.patch_size), self.bank if bank is None else bank)

    def forward(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mask (B, L) bool (True = masked: distance > threshold) and the distances (B, L) float32."""
        dist = self.distance(feat, bank)
        return dist > self.threshold, dist
