"""The fused ops' backends against the PyTorch reference, at the paper's shapes (ratios from one run).

Usage: python bench/kernels.py [--repeats 10] [--threads N] [--device cpu|cuda] [--ops a,b] [--no-append]
[--json PATH] [--peak-gflops X]
adaptive_mask: B = 1 and 8, P = 8, L = 256, D = 768; score_map: B = 1 and 8, C = 1792, 64 x 64 -> 256 x 256,
sigma 4; nearest_distance (the guide's bank search): B = 1 and 8, L = 256 queries per image, C = 176 (the cpu
preset), a float16 bank of M = 16,384 and 65,536 rows, with its arithmetic rate 2 N M C / time in GFLOP/s
(against `--peak-gflops`, the machine's fp32 peak, when given) and, on the CPU, per second of CPU time of the
process (all threads; robust to other load on a shared machine, where wall time is not). Every backend runs through the public dispatcher (aminet_edge.ops) on the same float32 tensors;
time = median of `--repeats` runs after a warm-up. CPU: torch and the C++ kernels use the same thread
count (`--threads`, default torch's). CUDA (--device cuda): events around each call, plus the bytes each
op must move (inputs read once, outputs written once) over the time, against the GPU's peak bandwidth
(`--peak-gbs`, else from the device properties where torch reports them) and against the copy bandwidth
measured in the same run (a 1 GiB device-to-device copy: bytes read + written over its median time),
the figure the >= 50 % goal for score_map at B = 8 refers to. `--json` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and OpenMP (0: torch's default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--peak-gbs", type=float, default=0.0, help="GPU peak memory bandwidth in GB/s")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--ops", default="adaptive_mask,score_map,nearest_distance", help="comma-separated ops to time")
    p.add_argument("--peak-gflops", type=float, default=0.0, help="fp32 peak of the CPU or GPU in GFLOP/s")
    p.add_argument("--no-append", action="store_true", help="print only; do not append to the results file (bench/out/)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by OpenMP when the extension first loads
    import torch

    from aminet_edge import ops

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU visible to torch")
    avail = ops.available_backends()
    kind = "cuda" if gpu else "cpu"
    backends = [b for b in ops.BACKENDS if b == "reference" or ops.unavailable_reason(b, kind) is None]
    omp = None
    if "cpp" in backends:
        from aminet_edge.ops import cpu

        omp = cpu.num_threads()
    peak = args.peak_gbs or (_peak_gbs(torch, dev) if gpu else 0.0)
    copy_gbs = 0.0

    cpu_s: dict[str, float] = {}  # median CPU seconds (all threads) of the last `timed` call, CPU runs only

    def timed(fn) -> float:
        if not gpu:
            def counted() -> None:
                t = time.process_time()
                fn()
                spent.append(time.process_time() - t)

            spent: list[float] = []
            wall = median_seconds(counted, repeats=args.repeats, warmup=2)
            cpu_s["last"] = statistics.median(spent[2:])
            return wall
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def once() -> None:
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)

        times: list[float] = []
        for _ in range(2):
            once()
        times.clear()
        for _ in range(args.repeats):
            once()
        return sorted(times)[len(times) // 2]

    if gpu:
        buf = torch.empty(1 << 28, dtype=torch.float32, device=dev)  # 1 GiB
        dst = torch.empty_like(buf)
        copy_gbs = 2 * buf.numel() * 4 / timed(lambda: dst.copy_(buf)) / 1e9
        del buf, dst
    g = torch.Generator().manual_seed(0)
    rows = []
    records = []
    selected = set(args.ops.split(","))
    for B in (int(b) for b in args.batches.split(",")):
        tokens = torch.randn(B, 256, 768, generator=g).to(dev)
        centers = torch.randn(B, 8, 768, generator=g).to(dev)
        mask_bytes = (tokens.numel() + centers.numel()) * 4 + B * 256 * (1 + 4 + 8)
        feat = torch.randn(B, 1792, 64, 64, generator=g)
        recon = (feat + 0.3 * torch.randn(feat.shape, generator=g)).to(dev)
        feat = feat.to(dev)
        score_bytes = (feat.numel() + recon.numel()) * 4 + B * (256 * 256 + 1) * 4
        queries = torch.randn(B, 256, 176, generator=g).to(dev)
        cases = [
            ("adaptive_mask", f"B={B}, L=256, P=8, D=768", mask_bytes, 0,
             lambda b: ops.adaptive_mask(tokens, centers, 0.5, backend=b)),
            ("score_map", f"B={B}, C=1792, 64x64 -> 256x256", score_bytes, 0,
             lambda b: ops.score_map(feat, recon, (256, 256), 4.0, backend=b)),
        ]
        for M in (16384, 65536):
            bank = torch.randn(M, 176, generator=g).half().to(dev)
            cases.append(("nearest_distance", f"B={B}, L=256, C=176, M={M} fp16", queries.numel() * 4 + bank.numel() * 2
                          + queries.numel() // 176 * 4, 2 * B * 256 * M * 176,
                          lambda b, bank=bank: ops.nearest_distance(queries, bank, backend=b)))
        for op, shape, nbytes, flops, call in cases:
            if op not in selected:
                continue
            ref_s = timed(lambda: call("reference"))
            ref_cpu = cpu_s.get("last", 0.0)
            for b in backends:
                s = ref_s if b == "reference" else timed(lambda b=b: call(b))
                busy = ref_cpu if b == "reference" else cpu_s.get("last", 0.0)
                gbs = nbytes / s / 1e9
                bw = f"{gbs:.1f} GB/s" + (f" ({100 * gbs / peak:.0f}% of peak {peak:.0f})" if peak else "")
                if copy_gbs:
                    bw += f" ({100 * gbs / copy_gbs:.0f}% of measured copy {copy_gbs:.0f})"
                gflops = flops / s / 1e9
                rate = "" if not flops else f"{gflops:.0f}" + (
                    f" ({100 * gflops / args.peak_gflops:.0f}% of peak {args.peak_gflops:.0f})" if args.peak_gflops else "")
                if flops and busy:
                    rate += f"; {flops / busy / 1e9:.0f} per CPU-second"
                rows.append(f"| {op} | {shape} | {b} | {s * 1e3:.2f} | {ref_s / s:.1f}x | {bw} | {rate} |")
                records.append({"op": op, "batch": B, "shape": shape, "backend": b, "ms": s * 1e3,
                                "vs_reference": ref_s / s, "gb_per_s": gbs,
                                "gflop_per_s": gflops if flops else None,
                                "gflop_per_cpu_s": flops / busy / 1e9 if flops and busy else None,
                                "pct_of_copy": 100 * gbs / copy_gbs if copy_gbs else None,
                                "pct_of_peak": 100 * gbs / peak if peak else None})
        del tokens, centers, feat, recon, queries, cases

    # the load average says how far a shared machine's other work slowed the wall times (CPU-second rates less)
    where = torch.cuda.get_device_name(dev) if gpu else (
        f"CPU, torch threads {threads}, OpenMP threads {omp}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs")
    table = "\n".join([
        f"kernels on {where}; torch {torch.__version__}; median of {args.repeats}",
        "",
        "| op | shape | backend | ms | vs reference | effective bandwidth | GFLOP/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "backends: " + "; ".join(f"{k}: {v}" for k, v in avail.items()),
    ])
    if not gpu:
        table += "\n\nGPU rows (triton, cuda; bytes moved / time vs peak bandwidth): not run here (no GPU)."
    if args.json:
        args.json.write_text(json.dumps({"where": where, "torch": torch.__version__, "copy_gb_per_s": copy_gbs or None,
                                         "peak_gb_per_s": peak or None, "repeats": args.repeats, "rows": records,
                                         "backends": avail}, indent=1))
    if args.no_append:
        print(table)
    else:
        append_result("kernels", table)


def _peak_gbs(torch, dev) -> float:
    """Peak DRAM bandwidth in GB/s from the device properties, 0 when torch does not report them."""
    props = torch.cuda.get_device_properties(dev)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else 0.0


if __name__ == "__main__":
    main()
