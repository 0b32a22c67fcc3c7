"""The whole inference graph in PyTorch: image -> features -> adaptive mask -> inpainting -> score map.

This is what export traces and what the torch runtime runs; `load_pipeline`/`save_pipeline_weights`
move it to and from a bundle's `weights.safetensors` (backbone weights included, so a bundle is
self-contained).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from aminet_edge.bundle import WEIGHTS_FILE, BundleConfig, read_config, weights_path
from aminet_edge.config import ScoreConfig
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import FeatureExtractor, build_feature_extractor
from aminet_edge.ops import reference


class Pipeline(nn.Module):
    """images (B, 3, S, S) float32, ImageNet-normalised -> amap (B, S, S), score (B,), mask (B, L) bool.

    `ops_backend` selects the implementation of the two fused ops ("reference" = pure PyTorch, exported
    to ONNX; others through the aminet_edge.ops dispatcher).
    """

    def __init__(self, extractor: FeatureExtractor, aminet: AMINet, score: ScoreConfig,
                 ops_backend: str = "reference") -> None:
        super().__init__()
        self.extractor = extractor
        self.aminet = aminet
        self.score = score
        self.ops_backend = ops_backend

    def _ops(self):  # type: ignore[no-untyped-def]
        if self.ops_backend == "reference":
            return reference.adaptive_mask, reference.score_map
        from aminet_edge import ops

        def mask_fn(tokens, centers, lam):  # type: ignore[no-untyped-def]
            return ops.adaptive_mask(tokens, centers, lam, backend=self.ops_backend)

        def score_fn(feat, recon, out_hw, sigma, image_score):  # type: ignore[no-untyped-def]
            return ops.score_map(feat, recon, out_hw, sigma, image_score, backend=self.ops_backend)

        return mask_fn, score_fn

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask_fn, score_fn = self._ops()
        feat = self.extractor(images)
        tokens, centers = self.aminet.cluster(feat)
        mask, _, _ = mask_fn(tokens, centers, self.aminet.cfg.mask_lambda)
        recon = self.aminet.inpaint_features(self.aminet.embed_inpaint_tokens(feat), mask)
        amap, score = score_fn(feat, recon, tuple(images.shape[-2:]), self.score.sigma, self.score.image_score)
        return amap, score, mask

    @torch.no_grad()
    def score_paths(self, paths: Sequence[str | Path], mean: Sequence[float], std: Sequence[float],
                    batch_size: int = 8, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run on image files: image scores (N,) float32 and maps (N, S, S) float32 at model resolution."""
        scores, maps, _ = self.infer_paths(paths, mean, std, batch_size, progress)
        return scores, maps

    @torch.no_grad()
    def infer_paths(self, paths: Sequence[str | Path], mean: Sequence[float], std: Sequence[float],
                    batch_size: int = 8, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`score_paths` plus the adaptive masks: scores (N,), maps (N, S, S) float32, masks (N, L) bool."""
        from aminet_edge.train.cache import load_batches

        size = self.aminet.cfg.image_size
        scores, maps, masks = [], [], []
        bar = tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress)
        for batch in load_batches(paths, size, mean, std, batch_size):
            amap, score, mask = self(batch)
            scores.append(score.numpy())
            maps.append(amap.numpy())
            masks.append(mask.numpy())
            bar.update(len(batch))
        bar.close()
        return np.concatenate(scores), np.concatenate(maps), np.concatenate(masks)


def state_dict_for_bundle(extractor: FeatureExtractor, aminet: AMINet) -> dict[str, torch.Tensor]:
    """All weights under "backbone." and "aminet." prefixes, contiguous, for safetensors."""
    out = {f"backbone.{k}": v for k, v in extractor.state_dict().items()}
    out.update({f"aminet.{k}": v for k, v in aminet.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_pipeline_weights(bundle: str | Path, extractor: FeatureExtractor, aminet: AMINet) -> Path:
    """Write `bundle/weights.safetensors`."""
    from safetensors.torch import save_file

    path = Path(bundle) / WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_bundle(extractor, aminet), str(path))
    return path


def build_modules(config: BundleConfig, pretrained: bool = False,
                  backbone_weights: str | Path | None = None) -> tuple[FeatureExtractor, AMINet]:
    """Fresh extractor and AMI-Net for `config` (random AMI-Net; backbone random unless pretrained)."""
    extractor = build_feature_extractor(config.model.backbone, weights=backbone_weights,
                                        image_size=config.model.image_size, pretrained=pretrained)
    if extractor.channels != config.in_channels:
        raise ValueError(f"backbone {config.model.backbone} gives {extractor.channels} channels, "
                         f"config says {config.in_channels}")
    return extractor, AMINet(config.model, config.in_channels)


def load_pipeline(bundle: str | Path, ops_backend: str = "reference") -> tuple[Pipeline, BundleConfig]:
    """Pipeline with the bundle's weights, in eval mode on the CPU."""
    from safetensors.torch import load_file

    from aminet_edge.bundle import BundleError

    config = read_config(bundle)
    extractor, aminet = build_modules(config)
    path = weights_path(bundle)
    tensors = load_file(str(path))
    for prefix, module in (("backbone.", extractor), ("aminet.", aminet)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(part, strict=False)
        if missing or unexpected:
            raise BundleError(f"{path}: weights do not match the config ({prefix[:-1]}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]})")
    pipeline = Pipeline(extractor, aminet, config.score, ops_backend).eval()
    return pipeline, config
