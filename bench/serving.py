"""Many cameras against one Triton server (cpu repository) next to the in-process Detector, in one run.

Usage: python bench/serving.py [--bundle DIR] [--cameras 1 4 16] [--fps 6] [--seconds 15] [--size 512]

In-process: `Detector.predict_batch` on the same frames at batch 1, 4 and 8 (images/s; the best is the
reference). Served: `aminet-edge triton-repo` (cpu, one instance using all cores, max batch 8) on the
tritonserver of scripts/install_tritonserver.sh; N camera threads, each sending its next frame when it
is due (`--fps` per camera) or when its previous answer arrived, whichever is later, through
`RemoteDetector.predict` (one frame in flight per camera: a camera waits for its verdict). The in-process runs are
repeated after the served ones (the machine's load drifts); the reference is the mean of both bests. Per load:
throughput (answered frames / s), p50 / p99 latency of a frame (request to Result, client encode and
decision included), frames in error, and the same load with dynamic batching off (max batch 1).
Frames: uint8 RGB --size x --size arrays (decoded camera frames); maps come back at that resolution.
Client, server and in-process runs share the machine's cores, as one box serving a line would.
The bundle (default: bench/runtime.py's random-weight cpu-preset bundle, int8 graphs) times like a
trained one; --bundle takes a trained, exported one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.serving import QueuePolicy, RemoteDetector, TritonServer, write_repository  # noqa: E402


def frames(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def in_process(bundle: Path, images: list[np.ndarray], batches: list[int], seconds: float) -> dict[int, float]:
    """images/s of Detector.predict_batch per batch size (repeated over `images` for ~`seconds`)."""
    out = {}
    det = Detector.load(bundle, batch_size=max(batches))
    det.predict_batch(images[:max(batches)], batch_size=max(batches))  # warm-up
    for b in batches:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for r in det.predict_batch(images, batch_size=b):
                r.raise_for_error()
            done += len(images)
        out[b] = done / (time.perf_counter() - t0)
        print(f"in-process batch {b}: {out[b]:.1f} images/s ({det.backend}, {det.precision})", flush=True)
    det.close()
    return out


def cameras(url: str, n: int, fps: float, seconds: float, images: list[np.ndarray]) -> dict[str, float]:
    """n camera threads for `seconds`: throughput, latency percentiles, errors."""
    remote = RemoteDetector(url, concurrency=1, timeout=30)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    end = start + seconds

    def camera(k: int) -> None:
        due = start + k / (fps * n)  # cameras out of phase, as on a line
        i = k
        while True:
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            if time.perf_counter() >= end:
                return
            t0 = time.perf_counter()
            try:
                r = remote.predict(images[i % len(images)])
                error = None
            except Exception as exc:  # noqa: BLE001 - counted: every frame gets a result or an error
                error = f"{type(exc).__name__}: {exc}"
            with lock:
                latencies.append((time.perf_counter() - t0) * 1e3)
                if error:
                    errors.append(error)
            due = max(due + 1.0 / fps, time.perf_counter())
            i += n

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    remote.close()
    if errors:
        print(f"  {len(errors)} errors, first: {errors[0]}", flush=True)
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return {"sent": len(latencies), "ok": len(latencies) - len(errors), "errors": len(errors),
            "throughput": (len(latencies) - len(errors)) / wall, "p50": float(p50), "p99": float(p99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="exported bundle [default: bench bundle]")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--fps", type=float, default=6.0, help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=15.0, help="per load")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    if args.bundle is None:
        from runtime import ensure_bundle

        args.bundle = ensure_bundle(None, "cpu")
    images = frames(16, args.size)
    load = os.getloadavg()
    local = in_process(args.bundle, images, [1, 4, 8], args.seconds / 2)
    best_batch = max(local, key=local.get)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for label, max_batch in (("on", args.max_batch), ("off", 1)):
            repo = Path(tmp) / f"repo-{label}"
            write_repository(args.bundle, repo, max_batch=max_batch, policy=QueuePolicy(2000, 64))
            with TritonServer(repo) as server:
                RemoteDetector(server.url).predict(images[:4])  # warm-up
                for n in args.cameras:
                    r = cameras(server.url, n, args.fps, args.seconds, images)
                    r.update(cameras=n, batching=label)
                    rows.append(r)
                    print(f"batching {label}, {n} camera(s): {r['throughput']:.1f} frames/s, p50 {r['p50']:.0f} ms, "
                          f"p99 {r['p99']:.0f} ms, {r['errors']} errors", flush=True)
    # again after the served runs: on a shared machine the load drifts; the reference is the mean of both
    local_after = in_process(args.bundle, images, [1, 4, 8], args.seconds / 2)
    load_after = os.getloadavg()
    best_after = max(local_after, key=local_after.get)
    reference = (local[best_batch] + local_after[best_after]) / 2
    on = {r["cameras"]: r for r in rows if r["batching"] == "on"}
    off = {r["cameras"]: r for r in rows if r["batching"] == "off"}
    source = (args.bundle / "SOURCE").read_text().strip() if (args.bundle / "SOURCE").is_file() else "trained"
    lines = [f"bundle: {args.bundle} ({source}); "
             f"frames {args.size}x{args.size} uint8; {args.fps:g} fps per camera offered; {args.seconds:g} s per load; "
             f"{os.cpu_count()} cores; load average {load[0]:.1f} before, {load_after[0]:.1f} after (shared machine)",
             "", "| in-process Detector | images/s before | images/s after |", "|---|---|---|"]
    lines += [f"| batch {b} | {v:.1f} | {local_after[b]:.1f} |" for b, v in local.items()]
    lines += ["", "| cameras | offered fps | batching on: frames/s | p50 ms | p99 ms | errors | vs in-process best "
              f"(mean of before/after) | batching off: frames/s | p99 ms | errors | gain of batching |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in args.cameras:
        a, b = on[n], off[n]
        lines.append(f"| {n} | {n * args.fps:g} | {a['throughput']:.1f} | {a['p50']:.0f} | {a['p99']:.0f} | "
                     f"{a['errors']}/{a['sent']} | {a['throughput'] / reference:.2f} | {b['throughput']:.1f} | "
                     f"{b['p99']:.0f} | {b['errors']}/{b['sent']} | {a['throughput'] / b['throughput']:.2f}x |")
    append_result("serving", "\n".join(lines))


if __name__ == "__main__":
    main()
