"""ImageNet CNN backbones defined in the project (no torchvision/timm dependency)."""

from aminet_edge.model.backbones.efficientnet_lite import SCALES as _LITE
from aminet_edge.model.backbones.weights import WeightsNotFoundError

BACKBONES: tuple[str, ...] = ("wide_resnet50_2", *_LITE)  # names accepted by build_feature_extractor

__all__ = ["BACKBONES", "WeightsNotFoundError"]
