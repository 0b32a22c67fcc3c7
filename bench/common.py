"""Shared helpers for the benchmarks: timing by median of repeats and appending results with the command."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

# raw results go to bench/out/ (ignored by git), so a benchmark run never changes the source tree;
# AMINET_BENCH_RESULTS=bench/results adds a run to the project's committed record (bench/gpu_check.py
# points it at its report folder)
RESULTS = Path(os.environ.get("AMINET_BENCH_RESULTS") or Path(__file__).resolve().parent / "out")


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def append_result(name: str, table: str) -> Path:
    """Print `table` and append it, with the command line, date and machine, to RESULTS/<name>.md
    (bench/out/ unless AMINET_BENCH_RESULTS says otherwise); returns that path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = (f"\n## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n`{command}`  \n"
              f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}\n\n")
    with path.open("a") as f:
        f.write(header + table.rstrip() + "\n")
    print(table)
    print(f"appended to {path}", file=sys.stderr)
    return path
