"""Nearest-normal guide: this project's test-time mask (ModelConfig.mask = "nearest_normal"), not the paper's.

A token is masked when its backbone feature (the mean over its K x K feature cells, optionally projected to
its d principal axes) is further from every token of a bank of normal training tokens than `threshold`,
the held-out normal tokens' `guide_quantile` of the same distance (aminet_edge.training.guide builds all
three). On magnetic tile the paper's clustering mask
leaves large low-contrast defects visible, so they are inpainted as themselves; this mask finds them
(BENCHMARKS.md, "Test-time masks on textures"). Deterministic, label-free; exported as a matrix product,
ArgMin, Gather and a norm (after a MatMul with the projection, when there is one), the bank a graph input
(export/graph_io.py: a bundle holds it once, in its weights file).
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

    bank: (M, d) float16 (rounded as stored in the bundle; the distances are computed in float32);
    threshold: () float32, in the features' units; projection: None (d = C, the backbone's channels) or
    (C, d) float32, the principal axes the tokens are projected to before the search (the bank holds
    projected tokens). All are buffers, so they travel in the bundle's weights file (under "guide.") and
    are recorded by its checksum.
    """

    bank: torch.Tensor
    threshold: torch.Tensor
    projection: torch.Tensor | None

    def __init__(self, bank: torch.Tensor, threshold: float | torch.Tensor, patch_size: int,
                 projection: torch.Tensor | None = None) -> None:
        super().__init__()
        if bank.ndim != 2 or len(bank) == 0:
            raise ValueError(f"the guide's bank must be a non-empty (M, d) matrix, got shape {tuple(bank.shape)}")
        if projection is not None and (projection.ndim != 2 or projection.shape[1] != bank.shape[1]):
            raise ValueError(f"the guide's projection must be (C, {bank.shape[1]}) for its bank {tuple(bank.shape)}, "
                             f"got shape {tuple(projection.shape)}")
        threshold = torch.as_tensor(threshold, dtype=torch.float32).reshape(())
        if not (torch.isfinite(threshold) and threshold > 0):
            raise ValueError(f"the guide's threshold must be a finite number > 0, got {float(threshold)}")
        self.register_buffer("bank", bank.detach().to(torch.float16).contiguous())
        self.register_buffer("threshold", threshold.clone())
        self.register_buffer("projection", None if projection is None else projection.detach().float().contiguous())
        self.patch_size = patch_size

    def tokens(self, feat: torch.Tensor) -> torch.Tensor:
        """The tokens searched in the bank: features (B, C, h, w) -> (B, L, d) float32 (token_features,
        projected when the guide has a projection)."""
        tokens = token_features(feat, self.patch_size)
        return tokens if self.projection is None else tokens @ self.projection

    def distance(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's distance to the nearest bank token: features (B, C, h, w) -> (B, L) float32.
        bank: (M, d) in place of the buffer (the exported single graph's input: the buffer's values as float32)."""
        return reference.nearest_distance(self.tokens(feat), self.bank if bank is None else bank)

    def forward(self, feat: torch.Tensor, bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mask (B, L) bool (True = masked: distance > threshold) and the distances (B, L) float32."""
        dist = self.distance(feat, bank)
        return dist > self.threshold, dist
