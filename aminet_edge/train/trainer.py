"""Training: feature cache -> AdamW on the AMI-Net losses -> calibration on held-out normals -> bundle."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aminet_edge.bundle import BundleConfig, BundleError
from aminet_edge.config import ModelConfig, ScoreConfig, TrainConfig, to_dict
from aminet_edge.data.datasets import Sample, load_dataset, select_few_shot
from aminet_edge.model.aminet import AMINet
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.model.pipeline import Pipeline, save_bundle
from aminet_edge.train.cache import build_feature_cache, weights_digest
from aminet_edge.train.calibrate import calibrate

CHECKPOINT_FILE = "checkpoint.pt"
SETTINGS_FILE = "checkpoint.json"  # the settings the checkpoint is trained with (see check_resume)
MIN_HOLDOUT = 3  # a mean and std from fewer normal scores are not a threshold


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

    With fewer than 10 images (few-shot) or fraction 0 nothing is held out and calibration reuses the
    training images; the bundle records that (its thresholds are then optimistic).
    """
    samples = list(samples)
    k = max(int(round(len(samples) * fraction)), MIN_HOLDOUT) if fraction > 0 else 0
    if len(samples) < 10 or k == 0:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    held = set(order[:k].tolist())
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


def training_settings(model: ModelConfig, train_cfg: TrainConfig, fit: Sequence[Sample], few_shot: int | None,
                      backbone_digest: str) -> dict[str, Any]:
    """What a checkpoint's training state depends on, as flat JSON-ready {name: value}: model and
    optimisation settings (epochs excluded: resuming to train longer is the point), the training images
    and the backbone's weights (sha256)."""
    train = {k: v for k, v in to_dict(train_cfg).items() if k not in ("epochs", "loss")}
    settings: dict[str, Any] = {f"model.{k}": v for k, v in to_dict(model).items()}
    settings |= {f"train.{k}": list(v) if isinstance(v, tuple) else v for k, v in train.items()}
    settings |= {f"train.loss.{k}": v for k, v in to_dict(train_cfg.loss).items()}
    settings |= {"few_shot": few_shot, "training images": [str(Path(s.path).resolve()) for s in fit],
                 "backbone weights sha256": backbone_digest}
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


def _save_checkpoint(path: Path, epoch: int, aminet: AMINet, opt: torch.optim.Optimizer,
                     gen: torch.Generator, history: list[dict[str, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"epoch": epoch, "aminet": aminet.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "history": history}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, aminet: AMINet, opt: torch.optim.Optimizer,
                     gen: torch.Generator) -> tuple[int, list[dict[str, float]]]:
    try:
        state = torch.load(path, weights_only=True)  # our own file, but never unpickle objects
        aminet.load_state_dict(state["aminet"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        return int(state["epoch"]), list(state["history"])
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, KeyError, RuntimeError (shapes), ...
        reason = " ".join(str(exc).split())[:200]
        raise BundleError(f"{path}: not a checkpoint of this training (written by another program or model "
                          f"configuration, or truncated: {type(exc).__name__}: {reason}); "
                          "delete it to start over, or train without --resume") from exc


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
) -> Path:
    """Train AMI-Net on normal images and write a bundle to `out`; returns the bundle path.

    data: one dataset root (one-for-one) or several (unified: one model for all categories); the normal
    training images are read from each root's layout (MVTec AD, BTAD or a plain folder). few_shot: train
    on k images per root. resume: continue from `out/checkpoint.pt` to the same result as an
    uninterrupted run; ValueError when there is none, or when the settings (model, optimisation, seed,
    training images, backbone weights; epochs may grow) differ from the checkpoint's, unless
    allow_changed_settings. Fixed seeds give repeatable runs. Out-of-range settings raise ValueError
    naming the field before anything is written.
    """
    model = model or ModelConfig()
    train_cfg = train_cfg or TrainConfig()
    score = score or ScoreConfig()
    model.validate()
    train_cfg.validate()
    if few_shot is not None and (isinstance(few_shot, bool) or not isinstance(few_shot, int) or few_shot < 1):
        raise ValueError(f"few_shot must be an integer >= 1 (or None for all images), got {few_shot!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    if allow_changed_settings and not resume:
        raise ValueError("allow_changed_settings (--allow-changed-settings) applies with resume (--resume) only")
    out = Path(out)
    if resume and not (out / CHECKPOINT_FILE).is_file():
        check_resume(out, {}, allow_changed_settings)  # raises: nothing to resume from
    out.mkdir(parents=True, exist_ok=True)
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    samples = load_training_samples(roots, few_shot=few_shot, seed=train_cfg.seed)
    fit, held = split_holdout(samples, train_cfg.holdout_fraction, train_cfg.seed)

    torch.manual_seed(train_cfg.seed)
    extractor = build_feature_extractor(model.backbone, weights=backbone_weights,
                                        image_size=model.image_size, pretrained=pretrained)
    config = BundleConfig(model=model, in_channels=extractor.channels, score=score, mean=extractor.mean,
                          std=extractor.std, backbone_source=extractor.weights_source)
    aminet = AMINet(model, extractor.channels)
    settings = training_settings(model, train_cfg, fit, few_shot, weights_digest(extractor))
    if resume:
        check_resume(out, settings, allow_changed_settings)
    else:
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # an earlier run's state must not meet these settings
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")

    t0 = time.perf_counter()
    feats = build_feature_cache(extractor, [s.path for s in fit], model.image_size, extractor.mean,
                                extractor.std, train_cfg.cache_dtype, cache_dir, progress=progress)
    cache_seconds = time.perf_counter() - t0

    opt = torch.optim.AdamW(aminet.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                            weight_decay=train_cfg.weight_decay)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    start, history = 0, []
    ckpt = out / CHECKPOINT_FILE
    if resume:
        start, history = _load_checkpoint(ckpt, aminet, opt, gen)

    aminet.train()
    n = feats.shape[0]
    t0 = time.perf_counter()
    for epoch in range(start, train_cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        seen, tick = 0, time.perf_counter()
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", unit="img", disable=not progress)
        for i in range(0, n, train_cfg.batch_size):
            idx = order[i:i + train_cfg.batch_size]
            batch = feats[idx].float()
            losses = aminet.losses(batch, train_cfg.loss, gen)
            opt.zero_grad(set_to_none=True)  # the authors' code never zeroes: gradients accumulated
            losses["total"].backward()
            opt.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{sums['total'] / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - tick):.1f}")
        bar.close()
        history.append({k: v / seen for k, v in sums.items()} | {"epoch": epoch + 1})
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == train_cfg.epochs:
            _save_checkpoint(ckpt, epoch + 1, aminet, opt, gen, history)
    train_seconds = time.perf_counter() - t0

    aminet.eval()
    pipeline = Pipeline(extractor, aminet, score).eval()
    config.calibration = calibrate(pipeline, held or fit, extractor.mean, extractor.std, held_out=bool(held),
                                   progress=progress)
    config.train = {
        **to_dict(train_cfg), "roots": [str(r) for r in roots], "few_shot": few_shot,
        "images": len(fit), "held_out": len(held), "cache_seconds": round(cache_seconds, 2),
        "train_seconds": round(train_seconds, 2), "history": history,
    }
    save_bundle(out, config, extractor, aminet)  # replaces (and logs) graphs and engines of an earlier bundle here
    return out
