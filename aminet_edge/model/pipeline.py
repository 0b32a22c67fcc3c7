"""The whole inference graph in PyTorch: image -> features -> adaptive mask -> inpainting -> score map.

This is what export traces and what the torch runtime runs; `load_pipeline`/`save_bundle` move it to
and from a bundle's `weights.safetensors` (backbone weights included, so a bundle is self-contained),
through aminet_edge.bundle's checks (recorded sha256, finite values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from aminet_edge.bundle import (SCHEMA_VERSION, WEIGHTS_FILE, BundleConfig, BundleError, make_record, owned_bundle,
                                read_config, remove_recorded, sha256_file, weights_file, weights_name, write_config)
from aminet_edge.config import ScoreConfig, TileConfig, uses_guide_map
from aminet_edge.files import install, write_temp
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import FeatureExtractor, build_feature_extractor
from aminet_edge.model.guide import NearestNormalGuide
from aminet_edge.ops import reference


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """t as float32; the same tensor when it already is (no Cast node in an exported graph)."""
    return t if t.dtype == torch.float32 else t.float()


def token_map(score: ScoreConfig, dist: torch.Tensor | None, grid: int) -> torch.Tensor | None:
    """The score map's token term: the guide's token distances (B, L) as a (B, grid, grid) map when
    score.map adds them, else None (reference.score_map's token_map)."""
    if not uses_guide_map(score.map):
        return None
    if dist is None:
        raise ValueError(f"score map {score.map!r} needs the nearest-normal guide's distances")
    return dist.reshape(dist.shape[0], grid, grid)


class Pipeline(nn.Module):
    """images (B, 3, S, S) float32, ImageNet-normalised -> amap (B, S, S), score (B,), mask (B, L) bool.

    The mask is the adaptive (clustering) mask, or the nearest-normal guide's when `guide` is given
    (ModelConfig.mask = "nearest_normal"; the guide always runs in float32). ScoreConfig.map
    "reconstruction+guide" adds the guide's token distances to the map (`token_map`).

    `ops_backend` selects the implementation of the two fused ops ("reference" = pure PyTorch, exported
    to ONNX; others through the aminet_edge.ops dispatcher). `compute_dtype` (None = float32, as exported;
    torch.float16 / torch.bfloat16) runs the backbone and AMI-Net's networks under autocast; the two
    fused ops always read float32, so the mask decision and the score map are computed as in fp32.
    """

    def __init__(self, extractor: FeatureExtractor, aminet: AMINet, score: ScoreConfig,
                 ops_backend: str = "reference", compute_dtype: torch.dtype | None = None,
                 guide: NearestNormalGuide | None = None) -> None:
        super().__init__()
        self.extractor = extractor
        self.aminet = aminet
        self.guide = guide
        self.score = score
        self.ops_backend = ops_backend
        self.compute_dtype = compute_dtype

    def _autocast(self, images: torch.Tensor) -> contextlib.AbstractContextManager:  # type: ignore[type-arg]
        if self.compute_dtype is None or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        # no weight-cast cache: a CUDA graph captured under autocast must not keep casts the cache frees
        return torch.autocast(images.device.type, dtype=self.compute_dtype, cache_enabled=False)

    def _ops(self):  # type: ignore[no-untyped-def]
        if self.ops_backend == "reference":
            return reference.adaptive_mask, reference.score_map
        from aminet_edge import ops

        def mask_fn(tokens, centers, lam):  # type: ignore[no-untyped-def]
            return ops.adaptive_mask(tokens, centers, lam, backend=self.ops_backend)

        def score_fn(feat, recon, out_hw, sigma, image_score, token_map, token_weight):  # type: ignore[no-untyped-def]
            return ops.score_map(feat, recon, out_hw, sigma, image_score, backend=self.ops_backend,
                                 token_map=token_map, token_weight=token_weight)

        return mask_fn, score_fn

    def restore(self, images: torch.Tensor, guide_bank: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """features and their restoration (B, C, h, w) float32, the mask (B, L) bool and, with the guide,
        its token distances (B, L) float32 (None with the adaptive mask). guide_bank: (M, C) float32 in place
        of the guide's buffer (export traces it as the single graph's input)."""
        with self._autocast(images):
            feat = self.extractor(images)
        dist = None
        if self.guide is not None:
            mask, dist = self.guide(_fp32(feat), guide_bank)
        else:
            with self._autocast(images):
                tokens, centers = self.aminet.cluster(feat)
            mask, _, _ = self._ops()[0](_fp32(tokens), _fp32(centers), self.aminet.cfg.mask_lambda)
        with self._autocast(images):
            recon = self.aminet.inpaint_features(self.aminet.embed_inpaint_tokens(feat), mask)
        return _fp32(feat), _fp32(recon), mask, dist

    def forward(self, images: torch.Tensor,
                guide_bank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat, recon, mask, dist = self.restore(images, guide_bank)
        tokens = token_map(self.score, dist, self.aminet.cfg.grid_size)
        amap, score = self._ops()[1](feat, recon, tuple(images.shape[-2:]), self.score.sigma, self.score.image_score,
                                     tokens, self.score.guide_weight)
        return amap, score, mask

    @torch.no_grad()
    def score_paths(self, paths: Sequence[str | Path], mean: Sequence[float], std: Sequence[float],
                    batch_size: int = 8, progress: bool = False, workers: int = 0,
                    tile: TileConfig | None = None) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """Run on image files on the pipeline's device: image scores (N,) float32 and maps (N, S, S) float32
        at model resolution, on the host. `workers` DataLoader processes decode the images. With `tile`
        (`infer_tiled`): the stitched maps at each image's own resolution, a list of (H_i, W_i)."""
        if tile is not None:
            return self.infer_tiled(paths, mean, std, tile, batch_size, progress, workers)[:2]
        return self.infer_paths(paths, mean, std, batch_size, progress, workers)[:2]

    @torch.no_grad()
    def infer_tiled(self, paths: Sequence[str | Path], mean: Sequence[float], std: Sequence[float], tile: TileConfig,
                    batch_size: int = 8, progress: bool = False, workers: int = 0, map_size: int | None = None
                    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Tiled inference on image files (aminet_edge.tiling, as the runtime's `Detector` tiles): scores
        (N,) float32, each the bundle's image score over its stitched map; the stitched maps, (H_i, W_i)
        float32 at the image's resolution, or (map_size, map_size) resized after scoring; token masks
        (T_i, L) bool per image, one row per tile. batch_size: tiles per forward pass."""
        from aminet_edge.data.batches import load_batches
        from aminet_edge.data.images import image_size_of, resize_map
        from aminet_edge.tiling import grid, stitch_and_score

        device = self.aminet.pos_embed.device
        sizes = [image_size_of(p) for p in paths]
        boxes = [grid(h, w, tile) for h, w in sizes]
        scores: list[float] = []
        maps: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        tile_maps: list[np.ndarray] = []
        tile_masks: list[np.ndarray] = []
        bar = tqdm(total=len(paths), desc="scoring tiled", unit="img", disable=not progress)
        for batch in load_batches(paths, self.aminet.cfg.image_size, mean, std, batch_size, workers,
                                  pin_memory=device.type == "cuda", tile=tile):
            amap, _, mask = self(batch.to(device, non_blocking=True))
            tile_maps += list(amap.cpu().numpy())
            tile_masks += list(mask.cpu().numpy())
            while len(maps) < len(paths) and len(tile_maps) >= len(boxes[len(maps)]):
                k = len(maps)
                t = len(boxes[k])
                full, score = stitch_and_score(tile_maps[:t], boxes[k], *sizes[k], tile, self.score.image_score)
                scores.append(score)
                maps.append(full if map_size is None else resize_map(full, map_size, map_size))
                masks.append(np.stack(tile_masks[:t]))
                del tile_maps[:t], tile_masks[:t]
                bar.update(1)
        bar.close()
        return np.asarray(scores, np.float32), maps, masks

    @torch.no_grad()
    def infer_paths(self, paths: Sequence[str | Path], mean: Sequence[float], std: Sequence[float],
                    batch_size: int = 8, progress: bool = False,
                    workers: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`score_paths` plus the test-time masks: scores (N,), maps (N, S, S) float32, masks (N, L) bool."""
        from aminet_edge.data.batches import load_batches

        size = self.aminet.cfg.image_size
        device = self.aminet.pos_embed.device
        scores, maps, masks = [], [], []
        bar = tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress)
        for batch in load_batches(paths, size, mean, std, batch_size, workers, pin_memory=device.type == "cuda"):
            amap, score, mask = self(batch.to(device, non_blocking=True))
            scores.append(score.cpu().numpy())
            maps.append(amap.cpu().numpy())
            masks.append(mask.cpu().numpy())
            bar.update(len(batch))
        bar.close()
        return np.concatenate(scores), np.concatenate(maps), np.concatenate(masks)


def state_dict_for_bundle(extractor: FeatureExtractor, aminet: AMINet,
                          guide: NearestNormalGuide | None = None) -> dict[str, torch.Tensor]:
    """All weights under "backbone.", "aminet." (and "guide.") prefixes, contiguous, for safetensors."""
    out = {f"backbone.{k}": v for k, v in extractor.state_dict().items()}
    out.update({f"aminet.{k}": v for k, v in aminet.state_dict().items()})
    if guide is not None:
        out.update({f"guide.{k}": v for k, v in guide.state_dict().items()})
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_bundle(bundle: str | Path, config: BundleConfig, extractor: FeatureExtractor, aminet: AMINet,
                guide: NearestNormalGuide | None = None, also: tuple[str, ...] = ()) -> Path:
    """Write a complete bundle: weights (the guide's bank and threshold with them) under their
    content-addressed name, then config.json recording their sha256 (config.artifacts is reset to them).

    `bundle` must be new, empty (but for the files named in `also`) or a bundle (BundleError otherwise,
    before anything is written: aminet_edge.bundle.owned_bundle). A crash at any instant leaves the
    previous bundle or the new one: the files the previous config.json recorded (its weights, graphs and
    engines, made from the weights being replaced) are deleted, each logged, only once the new
    config.json is in place. ValueError when a weight is NaN or infinite (a diverged training must not
    become a bundle) or the guide's presence disagrees with config.model.mask.
    """
    from safetensors.torch import save_file

    if (guide is not None) != (config.model.mask == "nearest_normal"):
        raise ValueError(f"model.mask is {config.model.mask!r} but a guide was {'' if guide else 'not '}given")
    bundle = Path(bundle)
    old = owned_bundle(bundle, also)
    tensors = state_dict_for_bundle(extractor, aminet, guide)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"weights {', '.join(bad[:5])} hold NaN or infinite values (training diverged?); "
                         "nothing written")
    tmp = write_temp(bundle / WEIGHTS_FILE, lambda path: save_file(tensors, str(path)))
    path = install(tmp, bundle / weights_name(sha256_file(tmp)[0]))
    config.artifacts = {"weights": make_record(bundle, path)}
    config.schema_version = SCHEMA_VERSION  # the weights are recorded now, whatever the bundle was read as
    write_config(bundle, config)
    if old is not None:
        remove_recorded(bundle, old, "made from the weights just replaced; export the bundle again")
    return bundle


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
    """Pipeline with the bundle's weights, in eval mode on the CPU.

    The weights file is checked against its recorded sha256 (aminet_edge.bundle.weights_file), read
    without unpickling, and must hold finite values matching the config; BundleError names the problem.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(bundle)
    path = weights_file(bundle, config)
    try:
        extractor, aminet = build_modules(config)
    except ValueError as exc:  # unknown backbone, channel count differing from the backbone's
        raise BundleError(f"{Path(bundle) / 'config.json'}: {exc}") from exc
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from exc
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BundleError(f"{path}: weights {', '.join(bad[:5])} hold NaN or infinite values")
    for prefix, module in (("backbone.", extractor), ("aminet.", aminet)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape
            raise BundleError(f"{path}: weights do not match the config ({exc})".splitlines()[0]) from exc
        if missing or unexpected:
            raise BundleError(f"{path}: weights do not match the config ({prefix[:-1]}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]})")
    guide = _load_guide(tensors, config, path)
    pipeline = Pipeline(extractor, aminet, config.score, ops_backend, guide=guide).eval()
    return pipeline, config


def _load_guide(tensors: dict[str, torch.Tensor], config: BundleConfig, path: Path) -> NearestNormalGuide | None:
    """The nearest-normal guide from the weights' "guide." tensors when config.model.mask asks for one;
    BundleError when they are missing, unexpected or of the wrong shape."""
    part = {k[len("guide."):]: v for k, v in tensors.items() if k.startswith("guide.")}
    if config.model.mask != "nearest_normal":
        if part:
            raise BundleError(f"{path}: holds a nearest-normal guide ({', '.join(sorted(part))}) but config.json's "
                              f"model.mask is {config.model.mask!r}")
        return None
    if set(part) - {"projection"} != {"bank", "threshold"}:
        raise BundleError(f"{path}: model.mask is 'nearest_normal' but the weights hold guide tensors "
                          f"{sorted(part) or 'none'} (expected bank, threshold and optionally projection); run "
                          "`aminet-edge set-mask`")
    bank, threshold, proj = part["bank"], part["threshold"], part.get("projection")
    dims = config.in_channels if proj is None else proj.shape[-1]
    if (bank.ndim != 2 or bank.shape[1] != dims or threshold.numel() != 1
            or (proj is not None and (proj.ndim != 2 or proj.shape[0] != config.in_channels))):
        raise BundleError(f"{path}: guide bank {tuple(bank.shape)} / threshold {tuple(threshold.shape)} / projection "
                          f"{None if proj is None else tuple(proj.shape)} do not match the config (expected (M, "
                          f"{config.in_channels}) and a scalar, or (M, d), a scalar and ({config.in_channels}, d))")
    try:
        return NearestNormalGuide(bank, threshold, config.model.patch_size, proj)
    except ValueError as exc:
        raise BundleError(f"{path}: {exc}") from exc
