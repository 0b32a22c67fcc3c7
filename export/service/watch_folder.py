#!/usr/bin/env python3
"""Watch a folder and run an aminet-edge Detector on every new image: the worker of aminet-detector.service.

Each image that appears in INPUT (and has stopped growing, so half-written files are not read) is
predicted once; the result is one JSON line in OUT/results.jsonl and on stdout (journald keeps it):

    {"time": "2025-01-31T10:00:00.123+00:00", "path": "/srv/inbox/part_17.png", "score": 0.0031,
     "normalized_score": 1.27, "is_anomaly": true, "anomaly_area": 0.004, "backend": "tensorrt",
     "backend_ms": 6.1, "error": null}

normalized_score is score / threshold (> 1.0 = anomalous); anomaly_area the fraction of pixels in the
binary mask. --overlays also writes OUT/overlays/<name>.png (image | heatmap | mask) for anomalous
images. --after move files each processed image under OUT/processed/{ok,anomaly,error}/; --after keep
(default) leaves it and, after a restart, skips the paths already in results.jsonl.
SIGTERM / SIGINT (systemctl stop) finish the current batch and exit 0. Torch-free: needs the runtime only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
RESULTS_FILE = "results.jsonl"
log = logging.getLogger("aminet-watch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle directory (trained, exported; engine built on the device)")
    p.add_argument("--input", required=True, type=Path, help="folder to watch for new images")
    p.add_argument("--out", required=True, type=Path, help="folder for results.jsonl, overlays/ and processed/")
    p.add_argument("--backend", default="auto",
                   help="auto, tensorrt, onnxruntime-split, onnxruntime or torch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda on a Jetson or RTX PC")
    p.add_argument("--threshold", default="normal",
                   help="'normal' (calibrated on good images), 'f1' (from `aminet-edge evaluate`) or a raw score")
    p.add_argument("--sensitivity", type=float, default=0.5, help="0 flags least, 1 flags most; 0.5 = calibrated")
    p.add_argument("--batch", type=int, default=4, help="images per backend call")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between folder scans")
    p.add_argument("--settle", type=float, default=0.5,
                   help="a file must keep its size and mtime this many seconds before it is read")
    p.add_argument("--after", choices=["keep", "move", "delete"], default="keep",
                   help="what to do with an image once its result is written")
    p.add_argument("--overlays", action="store_true", help="write a PNG overlay for each anomalous image")
    p.add_argument("--recursive", action="store_true", help="also watch sub-folders")
    p.add_argument("--once", action="store_true", help="process the images present now, then exit")
    p.add_argument("--quiet", action="store_true", help="no JSON lines on stdout (results.jsonl only)")
    args = p.parse_args(argv)
    if not 0.0 <= args.sensitivity <= 1.0:
        p.error("--sensitivity must be in [0, 1]")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    try:
        args.threshold = float(args.threshold)
    except ValueError:
        if args.threshold not in ("normal", "f1"):
            p.error("--threshold must be 'normal', 'f1' or a number")
    return args


class Watcher:
    """Finds images in a folder that are complete and not yet processed."""

    def __init__(self, folder: Path, settle: float, recursive: bool, done: set[str]) -> None:
        self.folder, self.settle, self.recursive = folder, settle, recursive
        self.done = done
        self._seen: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first time seen so)

    def ready(self, now: float) -> list[Path]:
        """Unprocessed images whose size and mtime have not changed for `settle` seconds, oldest first."""
        files = self.folder.rglob("*") if self.recursive else self.folder.iterdir()
        out = []
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES or str(path) in self.done:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while scanning
                continue
            if not path.is_file():
                continue
            key = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(str(path))
            if prev is None or prev[:2] != key:
                self._seen[str(path)] = (*key, now)
                if self.settle > 0:
                    continue
            elif now - prev[2] < self.settle:
                continue
            out.append((st.st_mtime_ns, path))
        return [p for _, p in sorted(out)]

    def mark_done(self, path: Path) -> None:
        self.done.add(str(path))
        self._seen.pop(str(path), None)


def already_done(results: Path) -> set[str]:
    """Paths recorded in an existing results.jsonl (so a restart does not predict them again)."""
    done: set[str] = set()
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a power loss
    return done


def record(result: Any, path: Path) -> dict[str, Any]:
    """The JSON line of one Result."""
    row: dict[str, Any] = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                           "path": str(path)}
    if result.ok:
        row.update(score=round(float(result.score), 8), normalized_score=round(float(result.normalized_score), 4),
                   is_anomaly=bool(result.is_anomaly), anomaly_area=round(float(result.mask.mean()), 6),
                   backend=result.backend, backend_ms=round(result.timing.backend_ms_per_image, 3), error=None)
    else:
        row.update(score=None, normalized_score=None, is_anomaly=None, anomaly_area=None,
                   backend=result.backend, backend_ms=None, error=str(result.error))
    return row


def write_overlay(out: Path, path: Path, result: Any, pixel_threshold: float) -> None:
    """OUT/overlays/<stem>.png: image | heatmap (pixel threshold at mid-scale) | predicted mask."""
    import numpy as np

    from aminet_edge.data.images import read_image
    from aminet_edge.evaluation.heatmaps import save_overlay

    image = read_image(path)
    save_overlay(out / "overlays" / f"{path.stem}.png", image, result.anomaly_map, vmin=0.0,
                 vmax=2.0 * pixel_threshold, pred_mask=np.asarray(result.mask))


def finish(path: Path, result: Any, args: argparse.Namespace) -> None:
    if args.after == "delete":
        path.unlink(missing_ok=True)
    elif args.after == "move":
        kind = "error" if not result.ok else ("anomaly" if result.is_anomaly else "ok")
        target = args.out / "processed" / kind
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target / path.name))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not args.input.is_dir():
        log.error("input folder %s does not exist", args.input)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    inside = args.out.resolve() == args.input.resolve() or args.input.resolve() in args.out.resolve().parents
    if args.recursive and inside:
        log.error("--out must not be inside --input with --recursive (overlays would be read as input)")
        return 2

    from aminet_edge import Detector  # after argument checks: --help works without the package

    try:
        detector = Detector.load(args.bundle, backend=args.backend, device=args.device, threshold=args.threshold,
                                 sensitivity=args.sensitivity, batch_size=args.batch)
    except (ImportError, ValueError, RuntimeError, OSError) as exc:  # bundle, backend or threshold problem
        log.error("cannot load %s: %s", args.bundle, exc)
        return 1
    log.info("%r via %s; watching %s", detector, detector.backend_description, args.input)

    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        log.info("signal %d: finishing the current batch", signum)
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    results_path = args.out / RESULTS_FILE
    watcher = Watcher(args.input, 0.0 if args.once else args.settle, args.recursive,
                      already_done(results_path) if args.after == "keep" else set())
    counts = {"images": 0, "anomalies": 0, "errors": 0}
    with results_path.open("a", buffering=1) as results:
        while not stop:
            ready = watcher.ready(time.monotonic())
            for start in range(0, len(ready), args.batch):
                batch = ready[start:start + args.batch]
                for path, result in zip(batch, detector.predict_batch(batch, prefetch=False)):
                    row = record(result, path)
                    line = json.dumps(row)
                    results.write(line + "\n")
                    if not args.quiet:
                        print(line, flush=True)
                    counts["images"] += 1
                    counts["anomalies"] += bool(row["is_anomaly"])
                    counts["errors"] += row["error"] is not None
                    if args.overlays and result.ok and result.is_anomaly:
                        write_overlay(args.out, path, result, result.thresholds.pixel)
                    finish(path, result, args)
                    watcher.mark_done(path)
                os.fsync(results.fileno())  # a result written is a result kept, even on power loss
                if stop:
                    break
            if args.once:
                break
            time.sleep(args.poll)
    detector.close()
    log.info("stopped: %(images)d images, %(anomalies)d anomalous, %(errors)d errors", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
