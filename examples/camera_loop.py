"""Live anomaly detection on a camera or a video: heatmap overlay, decision and FPS drawn on every frame.

    python examples/camera_loop.py [--bundle runs/demo/bundle] [--source 0 | part.mp4 | rtsp://...]
                                   [--device cuda] [--no-display] [--out overlay.mp4] [--jsonl frames.jsonl]

Needs OpenCV: `pip install opencv-python` (with a window) or `opencv-python-headless` (no window: use
--no-display with --out and/or --jsonl; export/service/ runs it this way as a service).
The heatmap puts the pixel threshold at mid-scale (green): red regions are above it, and the white
contours are the binary mask. In the window, q or Esc quits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

OPENCV_MISSING = ("camera_loop.py needs OpenCV, which is not installed: pip install opencv-python-headless "
                  "(no window; use --no-display) or pip install opencv-python (with a window)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", default="runs/demo/bundle", help="bundle directory")
    p.add_argument("--source", default="0", help="camera index, video file or stream URL")
    p.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime-split, onnxruntime or torch")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sensitivity", type=float, default=0.5, help="0 flags least, 1 flags most")
    p.add_argument("--alpha", type=float, default=0.45, help="heatmap opacity over the frame")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = until the end)")
    p.add_argument("--no-display", action="store_true", help="no window (headless OpenCV, services, SSH)")
    p.add_argument("--out", help="write the annotated frames to this video file (.mp4 or .avi)")
    p.add_argument("--jsonl", help="append one JSON line per frame to this file")
    return p.parse_args(argv)


def can_display(cv2: Any) -> bool:
    """Whether a window can be opened: a display server and an OpenCV built with a GUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("aminet-edge")
    except cv2.error:  # opencv-python-headless: "The function is not implemented"
        return False
    return True


def draw(cv2: Any, frame: Any, result: Any, fps: float, alpha: float) -> Any:
    """The frame (BGR uint8) with the heatmap, the mask contours, the decision and the speed drawn on it."""
    import numpy as np

    scaled = np.clip(result.anomaly_map / (2.0 * result.thresholds.pixel), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    vis = cv2.addWeighted(frame, 1.0 - alpha, heat, alpha, 0.0)
    contours, _ = cv2.findContours(result.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(vis, contours, -1, (255, 255, 255), 1)
    label = f"{'ANOMALY' if result.is_anomaly else 'OK'} {result.normalized_score:.2f}"
    color = (0, 0, 255) if result.is_anomaly else (0, 200, 0)
    size = max(vis.shape[1] / 900, 0.4)  # text scaled with the frame: readable at 160 px and at 4K
    line = int(32 * size) + 4
    cv2.putText(vis, label, (8, line), cv2.FONT_HERSHEY_SIMPLEX, size, color, max(int(2 * size), 1), cv2.LINE_AA)
    speed = f"{fps:.1f} FPS  {result.timing.backend_ms:.1f} ms {result.backend}"
    cv2.putText(vis, speed, (8, 2 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.75 * size, (255, 255, 255),
                max(int(1.5 * size), 1), cv2.LINE_AA)
    return vis


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import cv2
    except ImportError:
        print(OPENCV_MISSING, file=sys.stderr)
        return 2
    from aminet_edge import Detector

    try:
        detector = Detector.load(args.bundle, backend=args.backend, device=args.device,
                                 sensitivity=args.sensitivity)
    except (ImportError, ValueError, RuntimeError, OSError) as exc:  # bundle, backend or argument problem
        print(f"cannot load {args.bundle}: {exc}", file=sys.stderr)
        return 1
    source: int | str = int(args.source) if args.source.isdigit() else args.source
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        print(f"cannot open video source {args.source!r} (camera index, video file or stream URL)", file=sys.stderr)
        return 1
    display = not args.no_display and can_display(cv2)
    if not args.no_display and not display:
        print("no window available (headless OpenCV or no display): running as with --no-display", file=sys.stderr)
    writer = None
    jsonl = open(args.jsonl, "a", buffering=1) if args.jsonl else None  # noqa: SIM115 - closed below
    frames = anomalies = 0
    fps = 0.0
    backend_ms = 0.0
    start = last = time.perf_counter()
    try:
        while args.max_frames <= 0 or frames < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if frame.ndim == 2:  # a monochrome camera
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            result = detector.predict(frame, bgr=True)
            now = time.perf_counter()
            fps = 1.0 / max(now - last, 1e-9) if frames == 0 else 0.9 * fps + 0.1 / max(now - last, 1e-9)
            last = now
            frames += 1
            anomalies += result.is_anomaly
            backend_ms += result.timing.backend_ms
            vis = draw(cv2, frame, result, fps, args.alpha)
            if args.out:
                if writer is None:
                    fourcc = cv2.VideoWriter.fourcc(*("MJPG" if args.out.lower().endswith(".avi") else "mp4v"))
                    rate = capture.get(cv2.CAP_PROP_FPS) or 25.0
                    writer = cv2.VideoWriter(args.out, fourcc, rate, (vis.shape[1], vis.shape[0]))
                    if not writer.isOpened():
                        print(f"cannot write video {args.out!r} (try .avi)", file=sys.stderr)
                        return 1
                writer.write(vis)
            if jsonl:
                jsonl.write(json.dumps({"frame": frames - 1, "score": result.score,
                                        "normalized_score": result.normalized_score,
                                        "is_anomaly": result.is_anomaly, "anomaly_area": float(result.mask.mean()),
                                        "backend_ms": result.timing.backend_ms}) + "\n")
            if display:
                cv2.imshow("aminet-edge", vis)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if jsonl:
            jsonl.close()
        if display:
            cv2.destroyAllWindows()
        detector.close()
    if frames == 0:
        print(f"no frames read from {args.source!r}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{frames} frames, {anomalies} anomalous, {frames / elapsed:.1f} FPS overall, "
          f"{backend_ms / frames:.1f} ms/frame in the {detector.backend} backend")
    return 0


if __name__ == "__main__":
    sys.exit(main())
