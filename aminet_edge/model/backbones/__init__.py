"""ImageNet CNN backbones defined in the project (no torchvision/timm dependency)."""
