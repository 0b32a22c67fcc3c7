"""Nearest-neighbour baseline (PatchCore-style, no coreset) on a bundle's own backbone, evaluate-only.

Users compare AMI-Net with it on their own parts (`aminet-edge evaluate RUN DATA --baseline knn`).

- Features: the two deeper of the extractor's three stages (strides 8 and 16, PatchCore's layer2 and
  layer3 counterparts), each 3x3 average-pooled (stride 1, zero padding, as the AMI-Net extractor) at
  its own resolution, the stride-16 map bilinearly resized (align_corners=True) to the stride-8 grid,
  concatenated: (B, C2 + C3, S/8, S/8) patches.
- Memory bank: the patches of every training image, or, when there are more than `bank_cap`, a
  uniform random subsample of `bank_cap` of them (seeded): memory and time stay bounded, at some cost in
  accuracy against PatchCore's full bank or coreset.
- Patch score: Euclidean distance to the nearest bank patch. Map: bilinear (align_corners=True) to
  S x S, then the Gaussian smoothing of the AMI-Net map (`reference.smooth`, the bundle's sigma).
  Image score: the map's maximum (PatchCore's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from aminet_edge.model.features import FeatureExtractor
from aminet_edge.ops import reference

BANK_CAP = 50_000  # patches; 50,000 x 152 float32 (Lite0) = 29 MiB, and the test-time search stays minutes on a CPU
QUERY_CHUNK = 1024  # queries per distance block: 1024 x BANK_CAP float32 = 195 MiB


def knn_patches(extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    """Baseline patch features: images (B, 3, S, S) normalised as the extractor expects ->
    (B, C2 + C3, S/8, S/8) float32."""
    with torch.no_grad():
        _, mid, deep = extractor.stages(images)
        mid, deep = F.avg_pool2d(mid, 3, 1, 1), F.avg_pool2d(deep, 3, 1, 1)
        deep = F.interpolate(deep, size=mid.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([mid, deep], dim=1).float()


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """`reference.nearest_distance` of queries (M, C) to a bank (K, C) -> (M,) float32, in blocks of
    `chunk` queries (one block's (chunk, K) scores in memory at a time)."""
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1] or len(bank) == 0:
        raise ValueError(f"queries (M, C) and a non-empty bank (K, C) must agree in C, got "
                         f"{tuple(queries.shape)} and {tuple(bank.shape)}")
    return torch.cat([reference.nearest_distance(queries[i:i + chunk], bank) for i in range(0, len(queries), chunk)]
                     or [torch.empty(0, device=queries.device)])


def _flat(patches: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B * h * w, C), patches of one image contiguous, row-major."""
    return patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])


def build_bank(extractor: FeatureExtractor, paths: Sequence[str | Path], image_size: int, mean: Sequence[float],
               std: Sequence[float], bank_cap: int = BANK_CAP, seed: int = 0, batch_size: int = 8,
               progress: bool = False) -> tuple[torch.Tensor, int]:
    """Memory bank from the training images: (K, C) float32 with K = min(all patches, bank_cap), and the
    number of training patches it was drawn from."""
    from aminet_edge.data.batches import load_batches

    if not paths:
        raise ValueError("the kNN baseline needs training images for its memory bank; none found")
    if bank_cap < 1:
        raise ValueError(f"bank_cap must be >= 1, got {bank_cap}")
    per_image = (image_size // 8) ** 2
    total = len(paths) * per_image
    keep = np.sort(np.random.default_rng(seed).choice(total, bank_cap, replace=False)) if total > bank_cap else None
    parts, done = [], 0
    device = next(extractor.parameters()).device  # the bank lives where the backbone runs
    for batch in tqdm(load_batches(paths, image_size, mean, std, batch_size), total=-(-len(paths) // batch_size),
                      desc="kNN bank", disable=not progress):
        flat = _flat(knn_patches(extractor, batch.to(device)))
        if keep is not None:
            lo, hi = np.searchsorted(keep, [done, done + len(flat)])
            flat = flat[torch.from_numpy(keep[lo:hi] - done).to(device)]
        parts.append(flat)
        done += len(batch) * per_image
    return torch.cat(parts), total


def knn_scores(extractor: FeatureExtractor, bank: torch.Tensor, paths: Sequence[str | Path], image_size: int,
               mean: Sequence[float], std: Sequence[float], sigma: float, batch_size: int = 8,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) float32 and maps (N, S, S) float32 of the baseline on image files."""
    from aminet_edge.data.batches import load_batches

    scores, maps = [], []
    device = next(extractor.parameters()).device
    for batch in tqdm(load_batches(paths, image_size, mean, std, batch_size), total=-(-len(paths) // batch_size),
                      desc="kNN scoring", disable=not progress):
        patches = knn_patches(extractor, batch.to(device))
        b, _, h, w = patches.shape
        dist = nearest_distance(_flat(patches), bank).reshape(b, 1, h, w)
        up = F.interpolate(dist, size=(image_size, image_size), mode="bilinear", align_corners=True)[:, 0]
        amap = reference.smooth(up, sigma)
        maps.append(amap.cpu().numpy())
        scores.append(amap.reshape(b, -1).amax(1).cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)
