"""The C runtime (libaminet) vs the Python Detector: latency per image at batch 1 and 8, peak memory.

Usage: python bench/c_runtime.py [--bundle DIR] [--batches 1 8] [--repeats 20] [--threads 2] [--size 512]

Both run the bundle's fp32 model.onnx on OpenVINO's CPU plugin with the same settings (LATENCY hint,
--threads inference threads) on the same frames (uint8 RGB, --size x --size, 8 of them), each in its own
process so that its peak resident memory (getrusage ru_maxrss) is its own: the C side is
bench/c_runtime_bench.c linked to libaminet (no Python in the process), the Python side
`Detector.predict` on numpy arrays. Every timing is the whole predict call (preprocess, inference, map
resized to the input size, mask) per image; both processes stay loaded and their passes alternate
(C, Python, C, ...), so a shared machine's load hits them alike; median of --repeats after one warm-up. libaminet is built with CMake into build-bench/ (reused). The bundle defaults to
bench/runtime.py's (cpu preset, built on first use).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import append_result  # noqa: E402

BUILD = ROOT / "build-bench"
FRAMES = 8


def build_bench() -> Path:
    """libaminet (Release) and bench/c_runtime_bench.c linked to it; returns the bench executable."""
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", "-DAMINET_BUILD_CUDA=OFF",
                    "-DAMINET_COPY_INPLACE=OFF"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(BUILD), "-j2", "--target", "aminet"], check=True, capture_output=True)
    exe = BUILD / "c_runtime_bench"
    cc = shutil.which("cc") or "gcc"
    subprocess.run([cc, "-O2", "-o", str(exe), str(ROOT / "bench" / "c_runtime_bench.c"),
                    f"-I{ROOT / 'csrc' / 'include'}", f"-L{BUILD}", "-laminet", f"-Wl,-rpath,{BUILD}"], check=True)
    return exe


def python_worker(bundle: str, frames: str, size: int, batch: int, threads: int) -> None:
    """The Python side, in its own process, speaking c_runtime_bench.c's protocol on stdin / stdout."""
    from aminet_edge.runtime import Detector

    pixels = np.fromfile(frames, np.uint8).reshape(FRAMES, size, size, 3)
    t0 = time.perf_counter()
    det = Detector.load(bundle, backend="openvino", threads=threads, batch_size=batch, cache=False)
    load_ms = (time.perf_counter() - t0) * 1e3
    items = list(pixels)

    def one_pass() -> float:
        start = time.perf_counter()
        for s in range(0, FRAMES, batch):
            chunk = items[s:s + batch]
            det.predict(chunk if batch > 1 else chunk[0])
        return (time.perf_counter() - start) * 1e3 / FRAMES

    one_pass()
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"{one_pass():.4f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_ms": load_ms, "peak_rss_mib": peak}), flush=True)


def interleaved(commands: list[list[str]], repeats: int) -> list[tuple[float, dict]]:
    """Start each command (a bench process), alternate `repeats` passes between them; returns each one's
    median ms per image and its final JSON line."""
    procs = [subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{p.args} did not start"
    times: list[list[float]] = [[] for _ in procs]
    for _ in range(repeats):
        for p, t in zip(procs, times):
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("go\n")
            p.stdin.flush()
            t.append(float(p.stdout.readline()))
    out = []
    for p, t in zip(procs, times):
        rest, _ = p.communicate()
        assert p.returncode == 0, f"{p.args} failed"
        out.append((float(np.median(t)), json.loads(rest.splitlines()[-1])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="an exported bundle (default: bench/runtime.py's cpu-preset bundle)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--python-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_worker:
        bundle, frames, size, batch, threads = args.python_worker
        python_worker(bundle, frames, int(size), int(batch), int(threads))
        return
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from runtime import ensure_bundle

        bundle = ensure_bundle(None, "cpu")
    exe = build_bench()
    frames = BUILD / f"frames-{args.size}.u8"
    np.random.default_rng(0).integers(0, 256, (FRAMES, args.size, args.size, 3), dtype=np.uint8).tofile(frames)
    rows = []
    for batch in args.batches:
        common = [str(bundle), str(frames)]
        (c_ms, c), (py_ms, py) = interleaved(
            [[str(exe), *common, str(args.size), str(args.size), str(FRAMES), str(batch), str(args.threads)],
             [sys.executable, __file__, "--python-worker", *common, str(args.size), str(batch), str(args.threads)]],
            args.repeats)
        rows.append(f"| {batch} | {py_ms:.2f} | {c_ms:.2f} | {py_ms / c_ms:.2f}x | {py['peak_rss_mib']:.0f} | "
                    f"{c['peak_rss_mib']:.0f} |")
    head = ("| batch | Python Detector ms/img | libaminet ms/img | speed-up | Python peak RSS MiB | "
            "libaminet peak RSS MiB |\n|---|---|---|---|---|---|")
    note = (f"\nbundle {bundle}, openvino fp32, {args.threads} threads, {FRAMES} frames {args.size}x{args.size} uint8 RGB, "
            f"median of {args.repeats}; peak RSS of each side's own process")
    append_result("c_runtime", head + "\n" + "\n".join(rows) + note)


if __name__ == "__main__":
    main()
