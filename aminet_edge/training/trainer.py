"""Training: feature cache -> AdamW on the AMI-Net losses -> calibration on held-out normals -> bundle.

Runs on one device (`aminet_edge.device`): the models, the feature cache when it fits
(`aminet_edge.training.cache`), the random generator and the calibration all live there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aminet_edge.bundle import BundleConfig, owned_bundle, sha256_file
from aminet_edge.config import ModelConfig, ScoreConfig, TileConfig, TrainConfig, to_dict
from aminet_edge.data.batches import tile_count
from aminet_edge.data.datasets import Sample, load_dataset, select_few_shot
from aminet_edge.device import describe_device, make_generator, repeatable, resolve_device
from aminet_edge.files import atomic_write_text
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import FeatureExtractor, build_feature_extractor
from aminet_edge.model.pipeline import Pipeline, save_bundle
from aminet_edge.training.cache import (FeatureBatches, build_feature_cache, cache_nbytes, cache_placement,
                                    weights_digest)
from aminet_edge.model.guide import NearestNormalGuide
from aminet_edge.training.calibrate import calibrate, calibrate_score
from aminet_edge.training.guide import FEATURE_CHUNK, build_guide, image_tokens, pooled_tokens
from aminet_edge.training.mask_choice import choose_mask
from aminet_edge.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from aminet_edge.training.precision import resolve_precision
from aminet_edge.training.step import TrainStep

log = logging.getLogger("aminet_edge.training")
SETTINGS_FILE = "checkpoint.json"  # the settings the checkpoint is trained with (see check_resume)
MIN_HOLDOUT = 3  # a mean and std from fewer normal scores are not a threshold
MIN_IMAGES = MIN_HOLDOUT  # fewest normal images a bundle is trained (and, below 10, calibrated) on
FULL_HOLDOUT = 10  # from this many images on, MIN_HOLDOUT or more are held out for calibration
MAX_GPU_CACHE_GB = 1 << 20  # a bound on `gpu_cache_gb` (1 PiB): 1e300 GiB overflowed the byte count
TRAINING_FILES = (CHECKPOINT_FILE, SETTINGS_FILE)  # what a training writes into its output before the bundle
# ModelConfig fields used after training only
TEST_TIME_MASK = ("mask", "guide_quantile", "guide_bank_size", "guide_dims")


def load_training_samples(roots: Sequence[str | Path], few_shot: int | None, seed: int) -> list[Sample]:
    """Normal training images of every root (k per root when few_shot is set), in a fixed order."""
    samples: list[Sample] = []
    for root in roots:
        train = load_dataset(root).train
        samples += select_few_shot(train, few_shot, seed) if few_shot else train
    if not samples:
        raise ValueError(f"no training images found under {', '.join(str(r) for r in roots)}")
    return samples


def split_holdout(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Deterministically keep `fraction` of the normal training images (at least MIN_HOLDOUT) out for
    calibration.

    With fewer than FULL_HOLDOUT images (few-shot) or fraction 0 nothing is held out and calibration
    reuses the training images; the bundle records that (its thresholds are then optimistic) and
    `check_image_count` warns.
    """
    samples = list(samples)
    k = max(int(round(len(samples) * fraction)), MIN_HOLDOUT) if fraction > 0 else 0
    if len(samples) < FULL_HOLDOUT or k == 0:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    held = set(order[:k].tolist())
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


def check_image_count(images: int, held: Sequence[Sample]) -> None:
    """Refuse fewer than MIN_IMAGES normal images (ValueError: the threshold would be the training images'
    own scores, e.g. one image's score flags about half the normal images); warn when none is held out
    (fewer than FULL_HOLDOUT images or holdout_fraction 0): the thresholds then come from images the
    model was trained on and flag more normal images than they should."""
    if images < MIN_IMAGES:
        raise ValueError(f"{images} normal training image{'s' if images != 1 else ''}: at least {MIN_IMAGES} are "
                         f"needed (the image threshold is the normal scores' mean + 3 std; from fewer images it "
                         "is about the training images' own scores and flags many normal images); add images")
    if not held:
        log.warning("%d normal images and none held out (needs >= %d images and holdout_fraction > 0): the "
                    "thresholds are calibrated on the training images themselves and will flag more normal "
                    "images than they should; set thresholds with `aminet-edge evaluate` on labelled images, "
                    "or train on more images", images, FULL_HOLDOUT)


def split_record(fit: Sequence[Sample], held: Sequence[Sample], roots: Sequence[str | Path]) -> dict[str, Any]:
    """config.json's train.split: [name, sha256] of every training ("fit") and held-out image, in split
    order; name is the path under its data root (with the root's index when there are several)."""
    bases = [Path(r).resolve() for r in roots]

    def name(path: str | Path) -> str:
        full = Path(path).resolve()
        for i, base in enumerate(bases):
            if base in full.parents:
                rel = full.relative_to(base).as_posix()
                return rel if len(bases) == 1 else f"{i}:{rel}"
        return str(path)

    return {part: [[name(s.path), sha256_file(s.path)[0]] for s in samples]
            for part, samples in (("fit", fit), ("held_out", held))}


def recorded_split(bundle: str | Path, train_record: dict[str, Any], roots: Sequence[str | Path]
                   ) -> tuple[list[Sample], list[Sample]]:
    """A trained bundle's own (fit, held-out) split, re-derived from `roots` with its recorded config.json
    "train" settings (seed, holdout_fraction, few_shot) and checked file by file against the sha256 it
    recorded (train.split). ValueError when they are not recorded (a bundle trained before the split's
    checksums were: retrain it), or the roots hold other images (naming them) than it was trained on."""
    tr = train_record
    if not {"seed", "holdout_fraction", "images", "held_out"} <= set(tr):
        raise ValueError(f"{bundle}: config.json records no training split (train.seed, holdout_fraction, images, "
                         "held_out)")
    if not isinstance(tr.get("split"), dict):
        raise ValueError(f"{bundle}: config.json records no checksums of its training images (train.split; the "
                         "bundle was trained before aminet-edge recorded them), so other data of the same size "
                         "cannot be told from the data it was trained on; retrain it to re-calibrate")
    samples = load_training_samples(roots, tr.get("few_shot"), tr["seed"])
    if len(samples) != tr["images"] + tr["held_out"]:
        raise ValueError(f"{', '.join(map(str, roots))}: {len(samples)} training images, but {bundle} was trained on "
                         f"{tr['images']} + {tr['held_out']} held out: not the data it was trained on")
    fit, held = split_holdout(samples, tr["holdout_fraction"], tr["seed"])
    now = split_record(fit, held, roots)
    differ = [f"{new[0]} ({part}; trained on {old[0]})" for part in ("held_out", "fit")
              for new, old in zip(now[part], tr["split"].get(part, [])) if new[1] != old[1]]
    if differ or any(len(now[p]) != len(tr["split"].get(p, [])) for p in now):
        listed = "; ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise ValueError(f"{', '.join(map(str, roots))}: not the data {bundle} was trained on: {len(differ)} "
                         f"image(s) differ in content from the ones it recorded: {listed}")
    return fit, held


def training_settings(model: ModelConfig, train_cfg: TrainConfig, fit: Sequence[Sample], few_shot: int | None,
                      backbone_digest: str, tile: TileConfig | None = None) -> dict[str, Any]:
    """What a checkpoint's training state depends on, as flat JSON-ready {name: value}: model and
    optimisation settings (epochs excluded: resuming to train longer is the point), the training images
    and the backbone's weights (sha256)."""
    train = {k: v for k, v in to_dict(train_cfg).items() if k not in ("epochs", "loss")}
    # the test-time mask's settings do not change what is trained (set-mask switches it afterwards)
    settings: dict[str, Any] = {f"model.{k}": v for k, v in to_dict(model).items() if k not in TEST_TIME_MASK}
    settings |= {f"train.{k}": list(v) if isinstance(v, tuple) else v for k, v in train.items()}
    settings |= {f"train.loss.{k}": v for k, v in to_dict(train_cfg.loss).items()}
    settings |= {"few_shot": few_shot, "training images": [str(Path(s.path).resolve()) for s in fit],
                 "backbone weights sha256": backbone_digest}
    if tile is not None:  # untiled checkpoints recorded no tiling and resume as before
        settings["tile"] = to_dict(tile)
    return settings


def check_resume(out: Path, settings: dict[str, Any], allow_changed: bool) -> None:
    """Refuse to resume from `out`'s checkpoint when its recorded settings differ from `settings`
    (ValueError naming each difference), unless `allow_changed`. Resuming needs a checkpoint."""
    ckpt, recorded = out / CHECKPOINT_FILE, out / SETTINGS_FILE
    if not ckpt.is_file():
        raise ValueError(f"--resume: no checkpoint at {ckpt}; train without --resume to start from scratch")
    if allow_changed:
        return
    if not recorded.is_file():
        raise ValueError(f"--resume: {ckpt} has no recorded settings ({recorded} is missing); pass "
                         "--allow-changed-settings to resume with the current ones anyway")
    old = json.loads(recorded.read_text())
    changed = []
    for name in sorted(set(old) | set(settings)):
        before, now = old.get(name, "<unset>"), settings.get(name, "<unset>")
        if before == now:
            continue
        if isinstance(before, list) and isinstance(now, list) and name == "training images":
            added, removed = len(set(now) - set(before)), len(set(before) - set(now))
            changed.append(f"{name} ({len(before)} -> {len(now)}: {added} added, {removed} removed)")
        else:
            changed.append(f"{name} {before!r} -> {now!r}")
    if changed:
        raise ValueError(f"--resume: settings differ from those {ckpt} was trained with: {'; '.join(changed)}. "
                         "Resume with the checkpoint's settings, train without --resume to start over, or pass "
                         "--allow-changed-settings (API: allow_changed_settings=True) to continue with the new ones")


def train(
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    model: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    score: ScoreConfig | None = None,
    backbone_weights: str | Path | None = None,
    pretrained: bool = True,
    few_shot: int | None = None,
    cache_dir: str | Path | None = None,
    resume: bool = False,
    allow_changed_settings: bool = False,
    checkpoint_every: int = 1,
    progress: bool = True,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 0,
    compile: bool = False,
    gpu_cache_gb: float | None = None,
    tile: TileConfig | None = None,
) -> Path:
    """Train AMI-Net on normal images and write a bundle to `out`; returns the bundle path.

    data: one dataset root (one-for-one) or several (unified: one model for all categories); the normal
    training images are read from each root's layout (MVTec AD, BTAD or a plain folder). few_shot: train
    on k images per root; fewer than MIN_IMAGES images in all are refused (`check_image_count`).
    out: a new or empty folder, an earlier bundle (replaced crash-safely: pipeline.save_bundle) or a
    folder holding only this training's checkpoint; any other folder is refused (BundleError) before
    anything runs, its files untouched. resume: continue from `out/checkpoint.pt` to the same result as an
    uninterrupted run; ValueError when there is none, when the device type or precision differs, or when
    the settings (model, optimisation, seed, training images, backbone weights; epochs may grow) differ
    from the checkpoint's, unless allow_changed_settings. Fixed seeds give repeatable runs: bit for bit
    on the CPU, and on one GPU model with one torch version. Out-of-range settings raise ValueError
    naming the field before anything is written.
    device: "auto" (first CUDA GPU, else CPU), "cpu", "cuda" or "cuda:N".
    precision: "auto", "bf16", "fp16" or "fp32" (aminet_edge.training.precision; auto = bf16 on sm80+
    GPUs, fp16 with gradient scaling on older ones, fp32 on the CPU).
    workers: DataLoader processes decoding images (feature cache and calibration).
    compile: run the losses (forward and backward) through torch.compile; off by default, its gain is
    not yet measured on a GPU.
    gpu_cache_gb: GPU memory the feature cache may take, in GiB (None: half the free memory; 0: keep
    it in pinned-staged host memory).
    tile: native-resolution tiling (config.TileConfig): the training samples are every tile of every
    training image, thresholds are calibrated on the held-out images scored tiled, and the bundle records
    it (config.json "tile") so that `Detector`, evaluate and serving tile alike.
    """
    model = model or ModelConfig()
    train_cfg = train_cfg or TrainConfig()
    score = score or ScoreConfig()
    model.validate()
    train_cfg.validate()
    score.validate(model.mask, calibrated=False)
    if tile is not None:
        tile.validate()
    if few_shot is not None and (isinstance(few_shot, bool) or not isinstance(few_shot, int) or few_shot < 1):
        raise ValueError(f"few_shot must be an integer >= 1 (or None for all images), got {few_shot!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    if allow_changed_settings and not resume:
        raise ValueError("allow_changed_settings (--allow-changed-settings) applies with resume (--resume) only")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if gpu_cache_gb is not None and not 0 <= gpu_cache_gb <= MAX_GPU_CACHE_GB:
        raise ValueError(f"gpu_cache_gb must be in [0, {MAX_GPU_CACHE_GB}] GiB, got {gpu_cache_gb}")
    out = Path(out)
    if resume and not (out / CHECKPOINT_FILE).is_file():
        check_resume(out, {}, allow_changed_settings)  # raises: nothing to resume from
    owned_bundle(out, TRAINING_FILES)  # refuses a folder that is not a bundle before anything runs
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    samples = load_training_samples(roots, few_shot=few_shot, seed=train_cfg.seed)
    fit, held = split_holdout(samples, train_cfg.holdout_fraction, train_cfg.seed)
    model, score, mask_reason = choose_mask(model, score, len(held))
    if model.mask == "nearest_normal" and not held:
        raise ValueError(f"mask 'nearest_normal' needs held-out normal images for its threshold; {len(samples)} "
                         f"training images with holdout_fraction {train_cfg.holdout_fraction} hold none out "
                         f"(needs >= {FULL_HOLDOUT} images and holdout_fraction > 0)")
    check_image_count(len(samples), held)
    device_name = describe_device(dev)
    log.info("training on %s, precision %s", device_name, prec)
    log.info("mask: %s", mask_reason)

    torch.manual_seed(train_cfg.seed)  # weights are initialised on the CPU: the same start on every device
    extractor = build_feature_extractor(model.backbone, weights=backbone_weights,
                                        image_size=model.image_size, pretrained=pretrained).to(dev)
    config = BundleConfig(model=model, in_channels=extractor.channels, score=score, mean=extractor.mean,
                          std=extractor.std, backbone_source=extractor.weights_source, tile=tile)
    aminet = AMINet(model, extractor.channels).to(dev)
    settings = training_settings(model, train_cfg, fit, few_shot, weights_digest(extractor), tile)
    out.mkdir(parents=True, exist_ok=True)  # once data and backbone weights are found: a bad start leaves no folder
    if resume:
        check_resume(out, settings, allow_changed_settings)
    else:
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # an earlier run's state must not meet these settings
    atomic_write_text(out / SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")

    nbytes = cache_nbytes(tile_count([s.path for s in fit], tile), extractor.channels, model.feature_size,
                          train_cfg.cache_dtype)
    place = cache_placement(nbytes, dev, None if gpu_cache_gb is None else int(gpu_cache_gb * 2**30))
    log.info("feature cache: %.2f GiB of %s on %s", nbytes / 2**30, train_cfg.cache_dtype,
             "the GPU" if place.type == "cuda" else "the host")
    with repeatable(dev):
        step = TrainStep(aminet, train_cfg, dev, prec, compile=compile)
        gen = make_generator(dev, train_cfg.seed)
        start, history = 0, list[dict[str, float]]()
        ckpt = out / CHECKPOINT_FILE
        if resume:  # before the cache: a checkpoint that cannot continue fails fast
            start, history = load_checkpoint(ckpt, aminet, step, gen)
        t0 = time.perf_counter()
        feats = build_feature_cache(extractor, [s.path for s in fit], model.image_size, extractor.mean,
                                    extractor.std, train_cfg.cache_dtype, cache_dir, progress=progress,
                                    workers=workers, place=place, tile=tile)
        cache_seconds = time.perf_counter() - t0
        batches = FeatureBatches(feats, dev, train_cfg.batch_size)

        aminet.train()
        n = len(batches)
        t0 = time.perf_counter()
        for epoch in range(start, train_cfg.epochs):
            order = batches.order(gen)
            sums: dict[str, torch.Tensor] = {}
            tick = time.perf_counter()
            bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", unit="img", disable=not progress)
            for i in range(0, n, train_cfg.batch_size):
                idx = order[i:i + train_cfg.batch_size]
                losses = step(batches(idx), gen)
                for k, v in losses.items():  # summed on the device: no GPU sync per step
                    sums[k] = sums.get(k, 0.0) + v.double() * len(idx)
                bar.update(len(idx))
            means = {k: float(v) / n for k, v in sums.items()}
            bar.set_postfix(loss=f"{means['total']:.4f}", img_s=f"{n / (time.perf_counter() - tick):.1f}")
            bar.close()
            history.append(means | {"epoch": epoch + 1})
            if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == train_cfg.epochs:
                save_checkpoint(ckpt, epoch + 1, aminet, step, gen, history, device_name)
        train_seconds = time.perf_counter() - t0

    aminet.eval()
    guide, guide_summary = None, None
    if model.mask == "nearest_normal":
        guide, guide_summary = _guide_from_cache(feats, extractor, held, model, train_cfg.seed, dev, workers, tile)
        guide.to(dev)
    pipeline = Pipeline(extractor, aminet, score, guide=guide).eval()
    config.score = calibrate_score(pipeline, held, extractor.mean, extractor.std, workers, tile)
    config.calibration = calibrate(pipeline, held or fit, extractor.mean, extractor.std, held_out=bool(held),
                                   progress=progress, workers=workers, tile=tile)
    config.train = {
        **to_dict(train_cfg), "roots": [str(r) for r in roots], "few_shot": few_shot,
        "images": len(fit), "held_out": len(held), "split": split_record(fit, held, roots), "device": device_name, "precision": prec,
        "compile": compile, "mask_choice": mask_reason, "cache_on": "gpu" if place.type == "cuda" else "host",
        "cache_seconds": round(cache_seconds, 2), "train_seconds": round(train_seconds, 2), "history": history,
    } | ({"guide": guide_summary} if guide_summary else {})
    save_bundle(out, config, extractor, aminet, guide, TRAINING_FILES)  # an earlier bundle's files go once replaced
    return out


def _guide_from_cache(feats: torch.Tensor, extractor: FeatureExtractor, held: Sequence[Sample], model: ModelConfig,
                      seed: int, dev: torch.device, workers: int,
                      tile: TileConfig | None = None) -> tuple[NearestNormalGuide, dict[str, Any]]:
    """The nearest-normal guide: bank from the feature cache (N, C, h, w), threshold from the held-out
    images (their tiles with `tile`, as the cache holds the training images' tiles)."""
    chunk = FEATURE_CHUNK
    fit_tokens = pooled_tokens((feats[i:i + chunk].to(dev) for i in range(0, len(feats), chunk)), model.patch_size)
    held_tokens = image_tokens(extractor, [s.path for s in held], model, extractor.mean, extractor.std, dev,
                               workers, tile)
    return build_guide(fit_tokens, held_tokens, model, seed)
