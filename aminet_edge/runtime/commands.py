"""CLI verbs over the Detector: `aminet-edge predict` and `aminet-edge benchmark` (thin: parse, call, print).

Registered lazily by aminet_edge/cli.py; torch-free unless the torch backend is chosen.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from aminet_edge.runtime.backends import BACKENDS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}


def _threshold(value: str) -> str | float:
    if value in ("normal", "f1"):
        return value
    try:
        return float(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use 'normal', 'f1' or a number", param_hint="--threshold") from exc


def _load(run: str, backend: str, device: str, threshold: str, sensitivity: float, batch_size: int,
          **options: Any) -> Any:
    from aminet_edge.bundle import BundleError
    from aminet_edge.runtime import Detector

    try:
        return Detector.load(run, backend=backend, device=device, threshold=_threshold(threshold),
                             sensitivity=sensitivity, batch_size=batch_size, **options)
    except (BundleError, ImportError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc  # TypeError: an option the backend does not take


def expand_inputs(inputs: tuple[str, ...], recursive: bool = False) -> list[str]:
    """Files as given (missing ones kept, so they are reported), folders expanded to their images, sorted."""
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            paths += sorted(str(f) for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))  # hidden
        else:
            paths.append(item)
    return paths


MANIFEST = "predict-overlays.json"  # in OUT: {"overlays": [names in OUT/overlays/ this run wrote]}


def _recorded_overlays(out_dir: Path) -> list[str]:
    """The overlay names OUT/predict-overlays.json records (plain PNG file names; anything else dropped)."""
    try:
        names = json.loads((out_dir / MANIFEST).read_text()).get("overlays", [])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError) as exc:
        click.echo(f"warning: {out_dir / MANIFEST} unreadable ({exc}): no earlier overlay is deleted", err=True)
        return []
    return [n for n in names if isinstance(n, str) and n.endswith(".png") and Path(n).name == n
            and "\\" not in n] if isinstance(names, list) else []


def _record_overlays(out_dir: Path, names: list[str]) -> None:
    """Write OUT/predict-overlays.json atomically: the overlays this run wrote, the only ones --overwrite deletes."""
    from aminet_edge.files import atomic_write_text

    atomic_write_text(out_dir / MANIFEST, json.dumps({"overlays": names}, indent=1) + "\n")


def prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir` for a predict run. An earlier run's results.jsonl is never lost silently: it is
    refused (ClickException) unless `overwrite`, which deletes it and the overlays that run recorded writing
    in OUT/predict-overlays.json (plain names of regular files directly in OUT/overlays/, never through a
    symbolic link). An overlay results.jsonl lists that the manifest does not is left in place, with a warning."""
    from aminet_edge.files import remove_owned

    results = out_dir / "results.jsonl"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if results.exists():
            if not overwrite:
                raise click.ClickException(f"{results} exists (an earlier run's results): pass --overwrite to "
                                           "replace that run, or choose another --out")
            owned = _recorded_overlays(out_dir)
            for line in results.read_text(errors="replace").splitlines():
                try:
                    overlay = json.loads(line).get("overlay")
                except (ValueError, AttributeError):
                    continue
                if isinstance(overlay, str) and Path(overlay).name not in owned and os.path.lexists(overlay):
                    click.echo(f"warning: left {overlay} in place: listed in {results} but not recorded in "
                               f"{out_dir / MANIFEST} as written by predict", err=True)
            remove_owned(out_dir, [f"overlays/{name}" for name in owned],
                         "an earlier predict run's overlay (--overwrite)")  # never through a link
            results.unlink()
        _record_overlays(out_dir, [])
    except OSError as exc:
        raise click.ClickException(f"--out {out_dir}: cannot prepare the output folder "
                                   f"({exc.strerror or exc}: {exc.filename or out_dir})") from exc


def overlay_path(overlay_dir: Path, source: str, used: set[str]) -> Path:
    """A fresh PNG path in `overlay_dir` named after `source`'s stem: stem.png, else stem_2.png, stem_3.png...,
    the first name neither used in this run nor present on disk (so no overlay overwrites another)."""
    stem = Path(source).stem or "image"
    name, k = stem, 1
    while name in used or (overlay_dir / f"{name}.png").exists():
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return overlay_dir / f"{name}.png"


def _overlay(path: Path, source: str, result: Any) -> None:
    from PIL import Image

    from aminet_edge.data.images import read_image
    from aminet_edge.evaluation.heatmaps import result_overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result_overlay(read_image(source), result)).save(path)


@click.command("predict")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for results.jsonl and overlays/.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threshold", default="normal", show_default=True, help="normal, f1 or a raw image threshold.")
@click.option("--sensitivity", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="0 flags least, 0.5 = calibrated threshold, 1 flags most (thresholds x 4 ** (0.5 - s)).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16", "bf16"]), default=None,
              help="Precision of the backend [default: the backend's]: onnxruntime fp32 / int8 / fp16, openvino "
                   "fp32 / bf16 / int8 (`export --precision int8 --calibration-data`), torch fp32 / fp16 / bf16.")
@click.option("--overlays/--no-overlays", default=True, show_default=True, help="Write PNG overlays.")
@click.option("--recursive", is_flag=True, help="Search folders recursively.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's results.jsonl (and its overlays) in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict_cmd(run: str, images: tuple[str, ...], out: str, backend: str, device: str, threshold: str,
                sensitivity: float, batch_size: int, precision: str | None, overlays: bool, recursive: bool,
                overwrite: bool, quiet: bool) -> None:
    """Predict IMAGES (files or folders) with the bundle RUN.

    Writes OUT/results.jsonl (one JSON object per image: score, normalized_score, is_anomaly, thresholds,
    backend time, or the error) and OUT/overlays/*.png (never overwriting a file: clashing names get a
    suffix), recording the overlays it wrote in OUT/predict-overlays.json. An earlier run's results.jsonl
    in OUT is refused unless --overwrite (which deletes only that run's recorded overlays). An overlay that cannot
    be written is that image's "overlay_error"; the run goes on. Exits with status 1 if any image or
    overlay failed, after listing each failure and its reason.
    """
    from tqdm import tqdm

    paths = expand_inputs(images, recursive)
    if not paths:
        nested = [] if recursive else expand_inputs(images, True)
        hint = f" ({len(nested)} in their subfolders: add --recursive)" if nested else ""
        raise click.ClickException(f"no images found in {', '.join(images)}{hint}")
    out_dir = Path(out)
    prepare_out(out_dir, overwrite)
    detector = _load(run, backend, device, threshold, sensitivity, batch_size,
                     **({"precision": precision} if precision else {}))
    overlay_dir = out_dir / "overlays"
    failures: list[tuple[str, str]] = []
    anomalous = 0
    used_names: set[str] = set()
    overlay_failures: list[str] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=quiet, file=sys.stderr)
    chunk = batch_size * 4
    try:
        with (out_dir / "results.jsonl").open("x") as jsonl:
            for start in range(0, len(paths), chunk):
                part = paths[start:start + chunk]
                for k, result in enumerate(detector.predict_batch(part)):
                    record = result.to_dict()
                    record["index"] = start + k
                    if result.ok:
                        anomalous += int(result.is_anomaly)
                        if overlays:
                            try:
                                target = overlay_path(overlay_dir, part[k], used_names)
                                _overlay(target, part[k], result)
                                record["overlay"] = str(target)
                            except (OSError, ValueError) as exc:
                                record["overlay_error"] = f"overlay not written: {exc}"
                                failures.append((part[k], record["overlay_error"]))
                                overlay_failures.append(part[k])
                    else:
                        failures.append((part[k], str(result.error)))
                    jsonl.write(json.dumps(record) + "\n")
                    jsonl.flush()  # an interrupted run keeps every result written so far
                if overlays:
                    _record_overlays(out_dir, sorted(f"{name}.png" for name in used_names))
                bar.update(len(part))
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_dir / 'results.jsonl'} ({exc.strerror or exc}); the "
                                   "results of the images before this one are in it") from exc
    finally:
        bar.close()
    failed = len(failures) - len(overlay_failures)
    click.echo(f"{len(paths) - failed} image(s) predicted ({anomalous} anomalous), {failed} failed"
               + (f", {len(overlay_failures)} overlay(s) not written" if overlay_failures else "")
               + f"; backend {detector.backend}; results: {out_dir / 'results.jsonl'}")
    if failures:
        click.echo("failed:", err=True)
        for path, reason in failures:
            click.echo(f"  {path}: {reason}", err=True)
        sys.exit(1)


def latency_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of benchmark rows (see `benchmark`)."""
    lines = ["| backend | precision | device | batch | p50 ms | p90 ms | p99 ms | ms / image | images / s | "
             "backend ms (p50) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['batch']} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['ms_per_image']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['backend_p50_ms']:.1f} |")
    return "\n".join(lines)


def benchmark(detector: Any, batch: int, iterations: int, warmup: int,
              images: list[Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Time `detector.predict` on batches of `batch` images: `warmup` calls, then `iterations` timed calls.

    images: inputs to cycle through (default: random uint8 RGB at the model's resolution). Latency is
    the wall time of one predict call (decode/convert, preprocess, backend, post-process).
    """
    if images is None:
        rng = np.random.default_rng(seed)
        size = detector.image_size
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(batch, 4))]
    batches = [[images[(i * batch + j) % len(images)] for j in range(batch)] for i in range(max(len(images) // batch, 1))]
    for i in range(warmup):
        detector.predict(batches[i % len(batches)])
    times, backend = [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        results = detector.predict(batches[i % len(batches)])
        times.append((time.perf_counter() - t0) * 1e3)
        for r in results:
            r.raise_for_error()
        backend.append(results[0].timing.backend_ms)
    total_s = sum(times) / 1e3
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"backend": detector.backend, "precision": detector.precision, "device": detector.device, "batch": batch,
            "iterations": iterations,
            "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "ms_per_image": float(p50) / batch, "images_per_s": batch * iterations / total_s,
            "backend_p50_ms": float(np.median(backend))}


@click.command("benchmark")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--backend", "backends", multiple=True, type=click.Choice(["auto", *BACKENDS]),
              default=("auto",), show_default=True, help="Repeat to compare backends.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=(1,), show_default=True,
              help="Batch size; repeat for several.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False),
              help="Time on these images (decoded once, in memory) instead of random ones.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (openvino, onnxruntime, torch).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "int8", "fp16", "bf16"]),
              help="Precision of the onnxruntime backends' graphs (fp32, int8, fp16) or of what OpenVINO runs "
                   "(fp32, bf16 mixed, int8: `export --precision int8 --calibration-data`); repeat to compare "
                   "[default: onnxruntime int8 when the bundle was exported with it, else fp32; openvino bf16 "
                   "where the CPU has it, else fp32].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the rows as JSON.")
def benchmark_cmd(run: str, backends: tuple[str, ...], batches: tuple[int, ...], device: str, iterations: int,
                  warmup: int, image_dir: str | None, threads: int | None, precisions: tuple[str, ...],
                  json_path: str | None) -> None:
    """Latency (p50/p90/p99 per predict call) and throughput of RUN for each backend and batch size."""
    if json_path:
        from aminet_edge.bundle import BundleError, refuse_output_overlap

        try:
            refuse_output_overlap(run, json_path, "--json", "file")
        except BundleError as exc:
            raise click.ClickException(str(exc)) from exc
    images = None
    if image_dir is not None:
        from aminet_edge.data.images import read_image

        paths = expand_inputs((image_dir,))[:32]
        if not paths:
            raise click.ClickException(f"no images in {image_dir}")
        images = [read_image(p) for p in paths]
    if precisions and any(not name.startswith(("onnxruntime", "openvino")) for name in backends):
        raise click.ClickException("--precision applies to the onnxruntime and openvino backends only")
    rows = []
    for name in backends:
        for precision in precisions or (None,):
            gpu = name == "tensorrt" or (name == "auto" and device == "cuda")
            options: dict[str, Any] = {"threads": threads} if threads and not gpu else {}
            if precision:
                options["precision"] = precision
            # fixed thresholds: timing needs no calibration, so uncalibrated bundles can be benchmarked too
            detector = _load(run, name, device, "1.0", 0.5, max(batches), pixel_threshold=1.0, **options)
            for b in batches:
                detector.batch_size = b
                rows.append(benchmark(detector, b, iterations, warmup, images))
                click.echo(f"{detector.backend} {detector.precision} batch {b}: p50 {rows[-1]['p50_ms']:.1f} ms",
                           err=True)
            detector.close()
    click.echo(latency_table(rows))
    if json_path:
        from aminet_edge.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
