"""`Detector.load(backend="auto")` on CPU: time the accurate candidates here once, keep the choice in the bundle.

Candidates (`candidates`): every CPU backend that can run the bundle (in `auto_order`, the CPU-flag table,
which is also the order they are timed in), each in fp32, plus the int8 graphs whose record says they
passed validation (`bundle.int8_accepted`: onnxruntime's `model_int8` / `model_b_int8`, OpenVINO's
`model_int8_static`; runtime.int8_validation). bf16 and unvalidated int8 move masks and scores
(BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy"), so they are candidates only when the caller
asks for that precision (`precision=` option). torch is not timed: it is the fallback when no graph
backend can run.

Measurement (`measure_choice`): each candidate is created, run once on a (1, 3, S, S) batch of random
preprocessed pixels (warm-up: lazy allocations, OpenVINO's first inference), then timed for its share of
BUDGET_S (2 s per bundle in all, session creation included), at least one and at most MAX_RUNS timed runs;
the median ms per image at batch 1 decides. The fastest stays open and becomes the Detector's backend;
the others are closed as soon as they lose. Each candidate gets its warm-up and one timed run even when the
budget is spent, so the first load takes about max(BUDGET_S, the candidates' creation plus two runs each);
OpenVINO's creation is its compile, 0.8-1.6 s at the first load of a cpu-preset graph and 0.4-0.5 s from
its compile cache (BENCHMARKS.md, "CPU inference end to end"). Later loads read the kept choice and create
only the chosen backend.

The decision is kept in <bundle>/cache/auto_backend.json (CACHE_FILE, JSON, written atomically),
one entry per key: device, CPU model, its SIMD flags, usable cores, the versions of aminet-edge, numpy,
onnxruntime and openvino, the sha256 of every recorded graph, and the backend options given. Any change of
the key measures again; a file that is not valid JSON of this format is ignored with a warning and
replaced. Nothing in it is executed or unpickled; a cached choice is used only if it is still a candidate.

AMINET_AUTO=table (environment) skips the measurement: the first available backend of `auto_order`, as
`select_backend` picks it, for users who need a fixed start-up time. `aminet-edge info RUN` prints the
cached table (`cached_choice`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig, BundleError, int8_accepted, write_atomic
from aminet_edge.runtime.backends import (Backend, auto_order, auto_reason, backend_status,
                                          cpu_flags, create_backend, select_backend)

log = logging.getLogger("aminet_edge.runtime")

ENV = "AMINET_AUTO"
MODES = ("measure", "table")
CACHE_FILE = Path("cache") / "auto_backend.json"  # relative to the bundle
FORMAT = "aminet-edge auto backend"
FORMAT_VERSION = 1
BUDGET_S = 2.0  # all candidates of one bundle together, creation included (module docstring)
MAX_RUNS = 5  # timed runs per candidate at most
MAX_ENTRIES = 8  # keys kept per bundle (a bundle shared by several machines or option sets)
LIBRARIES = ("numpy", "onnxruntime", "openvino")
# (backend, precision) -> the int8 graph (part, bundle precision) that must pass validation to be a candidate
VALIDATED_INT8 = {("onnxruntime", "int8"): ("model", "int8"), ("onnxruntime-split", "int8"): ("model_b", "int8"),
                  ("openvino", "int8"): ("model", "int8_static")}
PRECISIONS = {"onnxruntime": ("fp32", "int8", "fp16"), "onnxruntime-split": ("fp32", "int8", "fp16"),
              "openvino": ("fp32", "bf16", "int8"), "openvino-split": ("fp32", "bf16")}

Measure = Callable[[Backend, np.ndarray, float], list[float]]


@dataclass(frozen=True)
class Candidate:
    """A backend and the precision it would run in ("fp32", "int8", or what the caller asked for)."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass
class Row:
    """One candidate's measurement: median ms per image at batch 1 over `runs` timed runs, or why it failed."""

    backend: str
    precision: str
    ms_per_image: float | None = None
    runs: int = 0
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        return f"{self.ms_per_image:.2f} ms/image (median of {self.runs}, batch 1)"


@dataclass
class Choice:
    """`auto`'s decision: the backend and precision chosen, the measured table (empty for AMINET_AUTO=table),
    why, when it was measured (UTC, ISO 8601) and the key it was measured under."""

    backend: str
    precision: str | None
    reason: str
    table: list[Row] = field(default_factory=list)
    measured_at: str = ""
    key: dict[str, Any] = field(default_factory=dict)


def mode() -> str:
    """AMINET_AUTO: "measure" (default) or "table"; ValueError naming the variable otherwise."""
    value = os.environ.get(ENV, "measure").strip().lower() or "measure"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: use 'measure' (time the candidates once per bundle and machine) "
                         "or 'table' (the CPU-flag table, no timing)")
    return value


# ---- the key ------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor()), "unknown" if none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity: a container's or taskset's limit), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library_versions() -> dict[str, str]:
    """{package: version or "absent"} of aminet-edge and the libraries whose kernels are timed."""
    from importlib import metadata

    from aminet_edge import __version__

    out = {"aminet-edge": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_key(config: BundleConfig, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a measurement depends on (module docstring); JSON-serialisable."""
    simd = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4", "asimd", "sve", "neon")))
    graphs = {k: r.get("sha256") for k, r in sorted((config.artifacts.get("onnx") or {}).items())
              if isinstance(r, dict)}
    return {"device": device, "cpu": cpu_model(), "cpu_flags": simd, "cores": usable_cores(),
            "libraries": library_versions(), "graphs": graphs,
            "options": {k: repr(v) for k, v in sorted(options.items())}}


def key_digest(key: dict[str, Any]) -> str:
    """The cache entry's name: sha256 (hex) of the key as canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---- candidates and measurement -------------------------------------------------------------------------
def candidates(bundle: str | Path, config: BundleConfig, precision: str | None = None) -> list[Candidate]:
    """The CPU candidates in table order: each available graph backend in fp32 and its validated int8 graph;
    with `precision`, each available backend that runs that precision in it (the caller's choice)."""
    out = []
    for name in auto_order("cpu", config):
        if name not in PRECISIONS or backend_status(name, bundle, config, "cpu") is not None:
            continue
        if precision is not None:
            if precision in PRECISIONS[name]:
                out.append(Candidate(name, precision))
            continue
        out.append(Candidate(name, "fp32"))
        graph = VALIDATED_INT8.get((name, "int8"))
        if graph is not None and int8_accepted(config, *graph):
            out.append(Candidate(name, "int8"))
    return out


def sample_batch(config: BundleConfig, seed: int = 0) -> np.ndarray:
    """(1, 3, S, S) float32: uniform random pixels normalised with the bundle's mean and std."""
    size = config.model.image_size
    pixels = np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)
    mean = np.asarray(config.mean, np.float32)[:, None, None]
    std = np.asarray(config.std, np.float32)[:, None, None]
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def time_runs(backend: Backend, images: np.ndarray, seconds: float,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """ms per image of each timed `backend.run(images)`, after one untimed warm-up run: at least one run,
    then more while `seconds` (from the first timed run's start) last, at most MAX_RUNS."""
    backend.run(images)
    start = clock()
    times: list[float] = []
    while True:
        t0 = clock()
        backend.run(images)
        t1 = clock()
        times.append((t1 - t0) * 1e3 / len(images))
        if len(times) >= MAX_RUNS or t1 - start >= seconds:
            return times


def measure_choice(bundle: Path, config: BundleConfig, found: list[Candidate], options: dict[str, Any],
                   measure: Measure | None = None, clock: Callable[[], float] = time.perf_counter,
                   budget_s: float = BUDGET_S) -> tuple[Choice, Backend | None]:
    """Create and time each of `found` (in order) within `budget_s` seconds in all; returns the Choice (the
    fastest; backend "" when every candidate failed) and the fastest's open Backend. `measure(backend,
    images, seconds)` gives ms per image of each timed run (default time_runs; tests inject their own)."""
    measure = measure or time_runs
    images = sample_batch(config)
    deadline = clock() + budget_s
    rows: list[Row] = []
    best: tuple[Row, Backend] | None = None
    options = {k: v for k, v in options.items() if k != "precision"}
    for i, cand in enumerate(found):
        row = Row(cand.backend, cand.precision)
        rows.append(row)
        instance = None
        try:
            instance = create_backend(cand.backend, bundle, config, "cpu", precision=cand.precision, **options)
            times = measure(instance, images, max(0.0, deadline - clock()) / (len(found) - i))
            row.ms_per_image, row.runs = float(statistics.median(times)), len(times)
        except (BundleError, ImportError, ValueError, TypeError, RuntimeError, OSError) as exc:
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if instance is not None:
                instance.close()
            continue
        if best is None or row.ms_per_image < best[0].ms_per_image:  # type: ignore[operator]
            if best is not None:
                best[1].close()
            best = (row, instance)
        else:
            instance.close()
    if best is None:
        return Choice("", None, "every candidate failed", rows), None
    timed = sorted((r for r in rows if r.error is None), key=lambda r: float(r.ms_per_image or 0.0))
    fastest = best[0]  # timed[0]: sorting is stable and only a strictly faster candidate replaced the best
    why = f"the fastest of {len(timed)} measured at batch 1"
    if len(timed) > 1:
        second = timed[1]
        why += f", {float(second.ms_per_image or 0.0) / float(fastest.ms_per_image or 1.0):.2f}x " \
               f"{second.backend} {second.precision}"
    return Choice(fastest.backend, fastest.precision, why, rows), best[1]


# ---- the cache ----------------------------------------------------------------------------------------
def _read_entries(path: Path) -> dict[str, Any]:
    """The file's entries; {} when absent; {} with a warning when it is not this format (it is replaced)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("ignored %s (%s): measuring the backends again", path, exc)
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT!r} file")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {data.get('version')!r}, this aminet-edge reads {FORMAT_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("no 'entries' object")
    except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        log.warning("ignored %s: %s; measuring the backends again (the file will be replaced)", path,
                    str(exc).splitlines()[0][:200])
        return {}
    return entries


def _choice_from(entry: Any) -> Choice | None:
    """The Choice of one cache entry, or None when it is malformed."""
    try:
        rows = [Row(str(r["backend"]), str(r["precision"]),
                    None if r.get("ms_per_image") is None else float(r["ms_per_image"]), int(r.get("runs", 0)),
                    None if r.get("error") is None else str(r["error"])) for r in entry["table"]]
        choice = entry["choice"]
        return Choice(str(choice["backend"]), str(choice["precision"]), str(entry["reason"]), rows,
                      str(entry["measured_at"]), dict(entry["key"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def cached_choice(bundle: str | Path, config: BundleConfig, device: str = "cpu",
                  options: dict[str, Any] | None = None) -> Choice | None:
    """The choice measured earlier for this key (module docstring), or None: never measured under this key,
    or the file is missing or unusable (then with a warning)."""
    key = cache_key(config, device, options or {})
    entry = _read_entries(Path(bundle) / CACHE_FILE).get(key_digest(key))
    choice = _choice_from(entry) if entry is not None else None
    if entry is not None and (choice is None or choice.key != key):
        log.warning("ignored a malformed entry of %s; measuring the backends again", Path(bundle) / CACHE_FILE)
        return None
    return choice


def store_choice(bundle: str | Path, choice: Choice) -> Path | None:
    """Add `choice` under its key to the bundle's cache file (atomically; at most MAX_ENTRIES keys, the most
    recent kept); None, with a warning, when the bundle is read-only."""
    path = Path(bundle) / CACHE_FILE
    entries = _read_entries(path)
    digest = key_digest(choice.key)
    entries.pop(digest, None)
    entries[digest] = {"key": choice.key, "measured_at": choice.measured_at, "reason": choice.reason,
                       "choice": {"backend": choice.backend, "precision": choice.precision},
                       "table": [asdict(r) for r in choice.table]}
    entries = dict(list(entries.items())[-MAX_ENTRIES:])
    data = {"format": FORMAT, "version": FORMAT_VERSION, "entries": entries}
    try:
        return write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        log.warning("cannot keep auto's measured choice in %s (%s): the backends are measured at every load "
                    "(set %s=table for a fixed start-up)", path, exc, ENV)
        return None


# ---- the entry point ----------------------------------------------------------------------------------
def table_text(choice: Choice) -> str:
    """The measured table, one line: "openvino fp32 12.30 ms/image; onnxruntime fp32 14.10; ..."."""
    parts = []
    for r in choice.table:
        parts.append(f"{r.backend} {r.precision} " + (f"{r.ms_per_image:.2f} ms" if r.error is None
                                                      else f"failed ({r.error})"))
    return "; ".join(parts)


def choose_backend(bundle: Path, config: BundleConfig, device: str, options: dict[str, Any],
                   measure: Measure | None = None, clock: Callable[[], float] = time.perf_counter,
                   budget_s: float = BUDGET_S) -> tuple[Backend, str]:
    """The backend `auto` runs (created, with `options`) and why, one line (module docstring)."""
    if device != "cpu":
        return by_table(bundle, config, device, options, f"{device}: not measured")
    if mode() == "table":
        return by_table(bundle, config, device, options, f"{ENV}=table")
    found = candidates(bundle, config, options.get("precision"))
    if not found:
        return by_table(bundle, config, device, options, "no graph backend to measure")
    cached = cached_choice(bundle, config, device, options)
    if cached is not None and Candidate(cached.backend, cached.precision or "") in found:
        why = (f"auto: measured here {cached.measured_at}: {cached.backend} {cached.precision}, {cached.reason} "
               f"({table_text(cached)}; kept in {CACHE_FILE})")
        return create_backend(cached.backend, bundle, config, device, **{**options, "precision": cached.precision}), why
    t0 = clock()
    choice, fastest = measure_choice(bundle, config, found, options, measure, clock, budget_s)
    if fastest is None:
        return by_table(bundle, config, device, options, f"every measured candidate failed: {table_text(choice)}")
    choice.measured_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    choice.key = cache_key(config, device, options)
    store_choice(bundle, choice)
    log.info("auto: measured %d candidate(s) in %.1f s: %s", len(found), clock() - t0, table_text(choice))
    return fastest, (f"auto: measured now: {choice.backend} {choice.precision}, {choice.reason} "
                      f"({table_text(choice)})")


def by_table(bundle: Path, config: BundleConfig, device: str, options: dict[str, Any],
             note: str) -> tuple[Backend, str]:
    """The first available backend of auto_order (the CPU-flag table), created, and why (`note`: why not
    measured)."""
    name, skipped = select_backend(bundle, config, device)
    reason = (f"auto ({note}): first available on {device} in the table order {', '.join(auto_order(device, config))} "
              f"({auto_reason(device, config)})")
    if skipped:
        reason += " (skipped " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")"
    return create_backend(name, bundle, config, device, **options), reason
