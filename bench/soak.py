"""Soak: many predictions through one Detector, reporting resident memory (RSS) growth after warm-up.

Usage: python bench/soak.py [--n 10000] [--backend auto] [--batch 1] [--bundle DIR] [--preset cpu]

Inputs rotate through images of different sizes and dtypes (uint8 RGB, uint16 grey, float32, BGR) and
every 100th call is a bad input (its InputError is caught), so the error path is soaked too. RSS is
read from /proc/self/status (VmRSS) after `--warmup` predictions and at ten checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402
from runtime import DEFAULT_BUNDLE, ensure_bundle  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def inputs(seed: int = 0) -> list[tuple[np.ndarray, bool]]:
    """(image, bgr) pairs of assorted sizes and dtypes."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate([(384, 384), (256, 256), (300, 500), (120, 90), (1024, 768), (64, 64)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        forms = [(rgb, False), (rgb[:, :, 0].astype(np.uint16) * 257, False), (rgb.astype(np.float32) / 255, False),
                 (np.ascontiguousarray(rgb[:, :, ::-1]), True)]
        out.append(forms[i % len(forms)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="predictions after warm-up")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()

    bundle = ensure_bundle(args.bundle, args.preset)
    from aminet_edge.runtime import Detector, InputError

    det = Detector.load(bundle, backend=args.backend)
    pool = inputs()
    bad = np.zeros((4, 4), np.uint8)
    errors = 0

    def step(i: int) -> None:
        nonlocal errors
        if i % 100 == 99:
            try:
                det.predict(bad)
            except InputError:
                errors += 1
            return
        image, bgr = pool[i % len(pool)]
        if args.batch == 1:
            det.predict(image, bgr=bgr).raise_for_error()
        else:
            for r in det.predict([image] * args.batch, bgr=bgr):
                r.raise_for_error()

    for i in range(args.warmup):
        step(i)
    base = rss_mb()
    checkpoints = [(0, base)]
    t0 = time.perf_counter()
    for i in range(args.n):
        step(args.warmup + i)
        if (i + 1) % max(args.n // 10, 1) == 0:
            checkpoints.append((i + 1, rss_mb()))
    seconds = time.perf_counter() - t0
    final = checkpoints[-1][1]
    peak = max(m for _, m in checkpoints)
    # growth over the second half tells a leak (steady climb) from allocator warm-up (early plateau)
    half = min(checkpoints, key=lambda c: abs(c[0] - args.n // 2))
    lines = [
        f"Soak: {args.n} predict calls (batch {args.batch}) after {args.warmup} warm-up, backend {det.backend}, "
        f"bundle preset {args.preset}; inputs rotate over 6 sizes up to 1024x768 and 4 dtypes; every 100th call "
        f"is a bad input ({errors} InputErrors caught). {seconds:.0f} s, {args.n / seconds:.1f} calls/s.",
        "",
        "| RSS after warm-up MiB | RSS at end MiB | growth MiB | growth over 2nd half MiB | peak MiB |",
        "|---|---|---|---|---|",
        f"| {base:.1f} | {final:.1f} | {final - base:+.1f} | {final - half[1]:+.1f} | {peak:.1f} |",
        "",
        "checkpoints (calls: MiB): " + ", ".join(f"{n}: {m:.1f}" for n, m in checkpoints),
    ]
    append_result("runtime", "\n".join(lines))


if __name__ == "__main__":
    main()
