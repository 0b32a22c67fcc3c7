"""What the nearest-normal guide costs at inference: `Detector.predict` ms per image of the same network
with the paper's adaptive mask and with the guide, per CPU backend, measured interleaved in one process.

Usage: python bench/guide_cost.py --adaptive RUN_A --guided RUN_G [--backends onnxruntime openvino ...]

Both bundles must be exported (`aminet-edge export RUN`); RUN_G is typically RUN_A after `aminet-edge
set-mask RUN_G DATA --mask nearest-normal` (same weights, so the difference is the mask alone). Frames:
random uint8 RGB at the model's input size; timing does not depend on the image content.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402

from aminet_edge import Detector  # noqa: E402
from aminet_edge.bundle import read_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", type=Path, required=True)
    parser.add_argument("--guided", type=Path, required=True)
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "onnxruntime-split"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    guided = read_config(args.guided)
    if guided.model.mask != "nearest_normal" or read_config(args.adaptive).model.mask != "adaptive":
        raise SystemExit("--adaptive must use the adaptive mask and --guided the nearest-normal guide")
    size = guided.model.image_size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(args.batch)]
    load_start = os.getloadavg()[0]
    detectors = {(b, kind): Detector.load(run, backend=b, precision="fp32", threshold=1.0, pixel_threshold=1.0)
                 for b in args.backends for kind, run in (("adaptive", args.adaptive), ("guided", args.guided))}
    samples: dict[tuple[str, str], list[float]] = {}
    for det in detectors.values():
        det.predict(frames)  # warm-up
    for _ in range(args.repeats):  # interleaved: a shared machine's load hits every variant alike
        for key, det in detectors.items():
            samples.setdefault(key, []).append(median_seconds(lambda: det.predict(frames), 1, 0) / args.batch)
    for det in detectors.values():
        det.close()
    bank = guided.train.get("guide", {}).get("bank_tokens", "?")
    rows = ["| backend | adaptive ms/image | guided ms/image | guided / adaptive |", "|---|---:|---:|---:|"]
    for b in args.backends:
        a, g = (float(np.median(samples[(b, k)])) for k in ("adaptive", "guided"))
        rows.append(f"| {b} | {a * 1e3:.1f} | {g * 1e3:.1f} | {g / a:.2f}x |")
        print(rows[-1], flush=True)
    note = (f"\n`{args.adaptive}` vs `{args.guided}` (bank {bank} tokens x {guided.in_channels} channels), "
            f"{size} px frames, batch {args.batch}, median of {args.repeats} interleaved repeats, load average "
            f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    append_result("guide_cost", "\n".join(rows) + "\n" + note)


if __name__ == "__main__":
    main()
