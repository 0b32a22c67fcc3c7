"""`aminet-edge` command line: thin verbs over the Python API (parse, call, print)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from typing import Any

import click

from aminet_edge.config import (AUTO, CACHE_DTYPES, PAPER_MAP, PAPER_MASK, PRESETS, SCORE_MAPS, ModelConfig,
                                ScoreConfig, TrainConfig)
from aminet_edge.training.mask_choice import MIN_GUIDE_HELD_OUT


class CliError(click.ClickException):
    """A user-facing error: printed as one line, exit code 1."""


def _run(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call the API and turn expected user errors into one clear line instead of a traceback."""
    from aminet_edge.bundle import BundleError

    try:
        return fn(*args, **kwargs)
    except (BundleError, ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc


# verbs defined next to the code they drive, imported only when used (keeps `--help` fast, torch-free)
LAZY_COMMANDS = {
    "export": "aminet_edge.export.commands:export_cmd",
    "build-engine": "aminet_edge.export.commands:build_engine_cmd",
    "predict": "aminet_edge.runtime.commands:predict_cmd",
    "benchmark": "aminet_edge.runtime.commands:benchmark_cmd",
    "triton-repo": "aminet_edge.serving.commands:triton_repo_cmd",
    "serve": "aminet_edge.serving.commands:serve_cmd",
    "station": "aminet_edge.station.commands:station_cmd",
}


class _EchoHandler(logging.Handler):
    """Log records of training and evaluation (which device, where the cache lives) as stderr lines."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _log_to_stderr() -> None:
    for name in ("aminet_edge.training", "aminet_edge.evaluation"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
            logger.addHandler(_EchoHandler())
        logger.setLevel(logging.INFO)


def device_option(default: str = "auto"):  # type: ignore[no-untyped-def]
    """`--device auto|cpu|cuda|cuda:N`, the same on every verb that runs a torch model."""
    return click.option("--device", default=default, show_default=True,
                        help="auto (first CUDA GPU, else the CPU), cpu, cuda or cuda:N.")


def tile_options(what: str):  # type: ignore[no-untyped-def]
    """`--tile SIZE --tile-overlap PX` (config.TileConfig), the same on every verb that scores images."""
    def wrap(fn):  # type: ignore[no-untyped-def]
        fn = click.option("--tile-overlap", type=click.IntRange(min=0), default=None,
                          help="Least overlap of neighbouring tiles, px [default with --tile: SIZE / 4].")(fn)
        return click.option("--tile", "tile_size", type=click.IntRange(min=0), default=None,
                            help=f"Score images at their own resolution in SIZE x SIZE px tiles, blended into one "
                                 f"map; {what}")(fn)
    return wrap


def tile_config(size: int | None, overlap: int | None) -> Any:
    """--tile / --tile-overlap as a TileConfig, None for --tile 0, "bundle" when neither is given."""
    from aminet_edge.config import TileConfig

    if size is None:
        if overlap is not None:
            raise CliError("--tile-overlap needs --tile SIZE")
        return "bundle"
    if size == 0:
        return None
    tile = TileConfig(size, size // 4 if overlap is None else overlap)
    try:
        tile.validate()
    except ValueError as exc:
        raise CliError(f"--tile / --tile-overlap: {exc}") from exc
    return tile


class LazyGroup(click.Group):
    """A click group that imports the LAZY_COMMANDS modules on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            import importlib

            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aminet-edge")
def main() -> None:
    """AMI-Net anomaly detection: train on good images, evaluate, export, deploy."""
    _log_to_stderr()


@main.command("train")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True,
              help="Model size preset; the options below override it.")
@click.option("--backbone", help="wide_resnet50_2 (paper) or efficientnet_lite0/1/2.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Backbone weights file.")
@click.option("--image-size", type=click.IntRange(min=16), help="Input side in pixels, a multiple of 16, at most 1024.")
@click.option("--embed-dim", type=click.IntRange(min=4))
@click.option("--heads", type=click.IntRange(min=1))
@click.option("--depth", type=click.IntRange(min=1), help="Inpainting transformer blocks.")
@click.option("--clusters", type=click.IntRange(min=1))
@click.option("--jitter/--no-jitter", default=None, help="Feature jittering (the paper's ‡ variant).")
@click.option("--mask", type=click.Choice(["auto", "adaptive", "nearest-normal"]), default="auto", show_default=True,
              help="Test-time mask: the paper's clustering mask, or this project's nearest-normal guide "
                   "(better on textures; a memory bank of normal tokens in the bundle). auto: the guide when "
                   f"training holds out >= {MIN_GUIDE_HELD_OUT} normal images, else the paper's; the log and "
                   "`aminet-edge info` say which and why.")
@click.option("--paper", is_flag=True, help="The paper's configuration: --mask adaptive --score-map reconstruction.")
@click.option("--guide-quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="nearest-normal: held-out normal tokens' distance quantile used as threshold [default: 0.95].")
@click.option("--guide-bank-size", type=click.IntRange(min=1),
              help="nearest-normal: most tokens in the bank, a coreset beyond "
                   f"[default: {ModelConfig.guide_bank_size}].")
@click.option("--guide-dims", type=click.IntRange(min=0),
              help="nearest-normal: principal axes the tokens are projected to before the search, 0 = every "
                   f"channel [default: {ModelConfig.guide_dims}].")
@click.option("--score-map", type=click.Choice([AUTO, *SCORE_MAPS]), default=AUTO, show_default=True,
              help="The paper's reconstruction map, or (with the nearest-normal guide) plus the guide's distances, "
                   "weighted on held-out normal images (this project's variant; better on textures). auto: "
                   "the guide's map with the guide, else the paper's.")
@click.option("--epochs", type=click.IntRange(min=1), default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=TrainConfig.lr, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--few-shot", type=click.IntRange(min=1), help="Train on k images per data root.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Keep the feature cache on disk here.")
@click.option("--cache-dtype", type=click.Choice(CACHE_DTYPES), default="float32", show_default=True)
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint.pt (same device type and precision; refused if the settings changed).")
@click.option("--allow-changed-settings", is_flag=True,
              help="With --resume: continue although settings differ from the checkpoint's.")
@device_option()
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto",
              show_default=True, help="Mixed precision: auto = bf16 on sm80+ GPUs (Jetson Orin included), "
                                      "fp16 with gradient scaling on older GPUs, fp32 on the CPU.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader processes decoding and resizing images.")
@click.option("--compile", "compile_", is_flag=True,
              help="Run the losses (forward and backward) through torch.compile; off by default, its gain "
                   "is not yet measured on a GPU.")
@click.option("--gpu-cache-gb", type=click.FloatRange(min=0), default=None,
              help="GPU memory the feature cache may use, GiB [default: half the free memory]; "
                   "larger caches stay in host memory with pinned, asynchronous copies. 0: always host.")
@tile_options("the training samples are the tiles, and the bundle records the tiling [default: off].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_cmd(data: tuple[str, ...], out: str, preset: str, backbone: str | None, weights: str | None,
              image_size: int | None, embed_dim: int | None, heads: int | None, depth: int | None,
              clusters: int | None, jitter: bool | None, mask: str, paper: bool, guide_quantile: float | None,
              guide_bank_size: int | None, guide_dims: int | None, score_map: str, epochs: int, batch_size: int,
              lr: float, seed: int, few_shot: int | None, cache_dir: str | None, cache_dtype: str, resume: bool,
              allow_changed_settings: bool, device: str, precision: str, workers: int, compile_: bool,
              gpu_cache_gb: float | None, tile_size: int | None, tile_overlap: int | None, quiet: bool) -> None:
    """Train on the normal images of DATA (one root, or several for a unified model)."""
    from aminet_edge.training.trainer import train

    if paper:
        if (mask, score_map) != (AUTO, AUTO):
            raise click.UsageError("--paper sets --mask adaptive --score-map reconstruction; give it alone")
        mask, score_map = PAPER_MASK, PAPER_MAP
    overrides: dict[str, Any] = {
        "backbone": backbone, "image_size": image_size, "embed_dim": embed_dim, "num_heads": heads,
        "inpaint_depth": depth, "num_clusters": clusters, "feature_jitter": jitter, "mask": mask.replace("-", "_"),
        "guide_quantile": guide_quantile, "guide_bank_size": guide_bank_size, "guide_dims": guide_dims}
    model = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, cache_dtype=cache_dtype)
    path = _run(train, list(data), out, model=model, train_cfg=cfg, score=ScoreConfig(map=score_map),
                backbone_weights=weights,
                few_shot=few_shot, cache_dir=cache_dir, resume=resume,
                allow_changed_settings=allow_changed_settings, progress=not quiet, device=device,
                precision=precision, workers=workers, compile=compile_, gpu_cache_gb=gpu_cache_gb,
                tile=_untiled_if_bundle(tile_config(tile_size, tile_overlap)))
    click.echo(f"bundle written: {path}")


def _untiled_if_bundle(tile: Any) -> Any:
    return None if tile == "bundle" else tile


@main.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write metrics here.")
@click.option("--heatmaps", type=click.Path(file_okay=False), help="Write PNG overlays here.")
@device_option()
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader processes decoding and resizing images.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write a markdown report here.")
@click.option("--baseline", type=click.Choice(["knn"]),
              help="Also evaluate the nearest-neighbour baseline on the bundle's backbone.")
@click.option("--bank-size", type=click.IntRange(min=1),
              help="Most patches in the kNN baseline's memory bank (default 50,000).")
@tile_options("0: untiled [default: the bundle's]. Other than the bundle's: AUROC / AUPRO only (its thresholds "
              "were calibrated otherwise; no F1 thresholds stored).")
@click.option("--quiet", is_flag=True)
def evaluate_cmd(run: str, data: str, json_path: str | None, heatmaps: str | None, device: str, workers: int,
                 report: str | None, baseline: str | None, bank_size: int | None, tile_size: int | None,
                 tile_overlap: int | None, quiet: bool) -> None:
    """Score DATA's test split with the bundle RUN and print image/pixel metrics."""
    from aminet_edge.evaluation.evaluate import evaluate_bundle
    from aminet_edge.bundle import refuse_output_overlap
    from aminet_edge.evaluation.report import write_report

    if report:
        _run(refuse_output_overlap, run, report, "--report", "file")
    metrics = _run(evaluate_bundle, run, data, json_path=json_path, heatmaps=heatmaps, progress=not quiet,
                   device=device, workers=workers, baseline=baseline, bank_cap=bank_size,
                   tile=tile_config(tile_size, tile_overlap))
    if report:
        write_report(metrics, report, f"Evaluation of {run} on {data}")
    summary = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for key in ("mask_coverage", "baseline_knn", "tile"):
        if isinstance(metrics.get(key), dict):
            summary[key] = {k: v for k, v in metrics[key].items() if not isinstance(v, dict)}
    click.echo(json.dumps(summary, indent=2))


@main.command("set-mask")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--mask", type=click.Choice(["adaptive", "nearest-normal"]), required=True,
              help="The test-time mask to switch to.")
@click.option("--guide-quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="nearest-normal: held-out quantile used as threshold [default: the bundle's].")
@click.option("--guide-bank-size", type=click.IntRange(min=1),
              help="nearest-normal: most tokens in the bank [default: the bundle's].")
@click.option("--guide-dims", type=click.IntRange(min=0),
              help="nearest-normal: principal axes the tokens are projected to, 0 = every channel [default: the "
                   "bundle's].")
@click.option("--score-map", type=click.Choice(SCORE_MAPS),
              help="reconstruction, or reconstruction+guide (nearest-normal only) [default: the bundle's, "
                   "reconstruction for adaptive].")
@device_option()
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def set_mask_cmd(run: str, data: tuple[str, ...], mask: str, guide_quantile: float | None,
                 guide_bank_size: int | None, guide_dims: int | None, score_map: str | None, device: str, workers: int,
                 quiet: bool) -> None:
    """Switch RUN's test-time mask (and score map) and re-calibrate it on DATA (the data it was trained on),
    no retraining.

    Graphs and engines of RUN are deleted (they hold the old mask): export them again.
    """
    from aminet_edge.training.guide import set_mask

    _run(set_mask, run, list(data), mask.replace("-", "_"), guide_quantile, guide_bank_size, device=device,
         progress=not quiet, workers=workers, score_map=score_map, dims=guide_dims)
    from aminet_edge.bundle import read_config

    click.echo(f"{run}: mask set to {mask}, score map {read_config(run).score.map}, thresholds re-calibrated; "
               "export it again")


@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", type=int, default=20, show_default=True)
@device_option()
@click.option("--quiet", is_flag=True)
def demo_cmd(out: str, epochs: int, device: str, quiet: bool) -> None:
    """Generate a synthetic surface-defect data set, train, evaluate and write a report with heatmaps."""
    from aminet_edge.demo import run_demo

    report = _run(run_demo, out, epochs=epochs, progress=not quiet, device=device)
    click.echo(f"report: {report}")


@main.command("info")
@click.argument("run", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--verify", is_flag=True, help="Check every file RUN records (size, sha256, weights it was made "
                                             "from) and list unrecorded graphs/engines; exit 1 on any problem.")
@click.option("--cmakedir", is_flag=True, help="Print only the CMake folder of this install's C library "
                                               "(aminet_DIR for find_package(aminet)); exit 1 if it carries none.")
def info_cmd(run: str | None, verify: bool, cmakedir: bool) -> None:
    """Versions, op kernels and inference backends available, GPU if any; with RUN, what that bundle
    holds and which backend `Detector.load(RUN)` would pick here."""
    from aminet_edge.bundle import BundleError
    from aminet_edge.info import collect_info

    if cmakedir:
        from aminet_edge import c_library

        found = c_library.find()
        if found is None or found.cmake_dir is None:
            raise click.ClickException(f"this install carries no C library CMake config in {c_library.PACKAGE} "
                                       "(docs/c-api.md: build the wheel, or cmake --install into the package)")
        click.echo(str(found.cmake_dir))
        return
    if verify and run is None:
        raise click.UsageError("--verify needs a bundle: aminet-edge info RUN --verify")
    try:
        info = collect_info(run, verify=verify)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in info.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")
    problems = [k for k, v in info.get("verify", {}).items() if v != "ok"]
    if problems:
        raise click.ClickException(f"{len(problems)} of {len(info['verify'])} bundle file(s) failed verification: "
                                   + ", ".join(problems))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
