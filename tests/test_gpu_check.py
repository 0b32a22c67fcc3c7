"""bench/gpu_check.py, the GPU proof script, tested without a GPU.

- the runner: every outcome (ok, failed, timeout, skipped, global budget spent) reaches the report, in
  markdown and JSON, with the reason and each step's seconds next to its cap;
- the offline packages: only modules this Python cannot import are put on PYTHONPATH; cupy is found
  under its CUDA 13 package name too;
- the dry run of the cheap steps in-process (`--dry-run --only environment,tensorrt_rtx`): only the report
  and its log in the report folder, which is checked against the device's return limits; and the goals
  judged from the benchmarks' JSON (canned figures: the parsing is under test, not a GPU);
- a step whose variants failed, that gave no figure, or whose command failed is a failed step;
- `pytest -m gpu` selects the kernel tests' CUDA and compiled-Triton cases and none of their CPU cases,
  and pytest's per-test outcomes are read back (also from a run cut short);
- bench/runtime_cuda.py's bundle loads (weights recorded), so its CPU run gives figures;
- the bottle-data preparation copies an MVTec-layout subset.
The full dry run (`python bench/gpu_check.py --dry-run`, ~4 min on 2 cores) is run by hand before a GPU run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
assert SPEC and SPEC.loader
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_check"] = gpu_check
SPEC.loader.exec_module(gpu_check)


def test_runner_reports_every_outcome(tmp_path: Path) -> None:
    runner = gpu_check.Runner(tmp_path, dry_run=True, budget=30, data=tmp_path, env={"PATH": "/usr/bin:/bin"})

    def ok(step, budget):  # type: ignore[no-untyped-def]
        step.figures["x"] = 1.5

    def skip(step, budget):  # type: ignore[no-untyped-def]
        raise gpu_check.Skip("needs --device (branch i10-train)")

    def fail(step, budget):  # type: ignore[no-untyped-def]
        gpu_check.check(runner.sh(step, [sys.executable, "-c", "import sys; sys.exit('boom')"], 10), "child")

    def slow(step, budget):  # type: ignore[no-untyped-def]
        # a child that holds the output pipe too (as compile or DataLoader workers do) dies with the command
        code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                "time.sleep(30)']); time.sleep(30)")
        runner.sh(step, [sys.executable, "-c", code], 0.5)

    for name, fn in (("a", ok), ("b", skip), ("c", fail), ("d", slow)):
        runner.run(name, 10, fn)
    runner.deadline = 0  # spent
    runner.run("e", 10, ok)
    status = {s.name: (s.status, s.reason) for s in runner.steps}
    assert status["a"] == ("ok", "") and status["b"] == ("skipped", "needs --device (branch i10-train)")
    assert status["c"][0] == "failed" and "child exited 1: boom" in status["c"][1]
    assert status["d"][0] == "timeout" and "ran past" in status["d"][1]
    assert status["e"] == ("skipped", "global time budget spent")
    md, js = gpu_check.write_report(tmp_path, runner.steps, True, 1.0)
    report = json.loads(js.read_text())
    assert [s["status"] for s in report["steps"]] == ["ok", "skipped", "failed", "timeout", "skipped"]
    assert report["steps"][0]["figures"] == {"x": 1.5} and report["steps"][0]["budget"] == 10
    text = md.read_text()
    assert "DRY RUN" in text and "| c | failed |" in text and "boom" in text
    seconds = next(s["seconds"] for s in report["steps"] if s["name"] == "d")
    assert 0.5 <= seconds < 5 and f"| d | timeout | {seconds} | 10 |" in text  # measured time, then the cap
    assert "boom" in (tmp_path / "gpu_check.log").read_text()  # every command's whole output


def test_vendor_only_fills_what_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "aminet_fake_pkg").mkdir(parents=True)
    (src / "aminet_fake_pkg" / "__init__.py").write_text("VALUE = 42\n")
    (src / "json").mkdir()  # shadows the stdlib if wrongly linked
    archive = tmp_path / "vendor.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(src / "aminet_fake_pkg", arcname="aminet_fake_pkg")
        tar.add(src / "json", arcname="json")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    old = gpu_check.VENDOR
    gpu_check.VENDOR = ("aminet_fake_pkg", "json")
    try:
        used, native = gpu_check.activate_vendor(archive, env)
    finally:
        gpu_check.VENDOR = old
    assert used == ["aminet_fake_pkg"] and native == ["json"]
    value = gpu_check.probe(sys.executable, env, "import json, aminet_fake_pkg; print(json.dumps(aminet_fake_pkg.VALUE))")
    assert value == 42


def test_dry_run_of_the_cheap_steps(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "environment,tensorrt_rtx"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert code == 0 and report["dry_run"] is True and list(steps) == ["environment", "tensorrt_rtx"]
    env = steps["environment"]
    assert env["status"] == "ok" and env["figures"]["torch"] and env["figures"]["cuda_available"] is False
    assert steps["tensorrt_rtx"]["status"] == "skipped" and steps["tensorrt_rtx"]["reason"]
    assert "| environment | ok |" in (tmp_path / "gpu_check.md").read_text()
    # the report folder holds the report alone (what the device returns), within its limits
    assert {p.name for p in tmp_path.iterdir()} <= set(gpu_check.REPORT_FILES)
    assert report["returned_file_problems"] == [] and gpu_check.returned_problems(tmp_path) == []
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "nonsense"])


def test_time_plan_fits_the_device_window() -> None:
    """The plan of the module docstring: the caps of the steps before the leftover-time ones sum to the
    budget, and start (~120 s) + transfers (~20 s) + the run (budget + 30 s margin as the command's
    timeout) + one warm re-run (240 s) + idle (30 s) fit the 900 s of device time; one command <= 600 s."""
    names = [name for name, _, _ in gpu_check.STEPS]
    planned = gpu_check.STEPS[:names.index("tensorrt_rtx")]
    assert sum(cap for _, cap, _ in planned) == gpu_check.BUDGET
    assert gpu_check.BUDGET + 30 <= 600 and 120 + 20 + gpu_check.BUDGET + 30 + 240 + 30 <= 900
    assert names[:4] == ["environment", "build_cuda", "kernels", "runtime"] and names[-1] == "build_cpp"


def test_report_folder_is_checked_against_the_return_limits(tmp_path: Path) -> None:
    """At most 8 files of 16 MiB (64 MiB in all), two folders down, plain names: else the run says what
    would not come back, in its report, and exits 1."""
    out = tmp_path / "out"
    out.mkdir()
    for name in gpu_check.REPORT_FILES:
        (out / name).write_text("x")
    assert gpu_check.returned_problems(out) == []
    with (out / "weights.bin").open("wb") as f:
        f.truncate(17 * 2**20)  # sparse: 17 MiB without writing them
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "c" / "deep.txt").write_text("")
    (out / "odd name.txt").write_text("")
    for i in range(3):
        (out / f"extra{i}.txt").write_text("")
    problems = gpu_check.returned_problems(out)
    assert problems == ["9 files, at most 8 come back", "a/b/c/deep.txt: more than 2 folders down",
                        "odd name.txt: a name with characters other than letters, digits, '.', '_', '-'",
                        "weights.bin: 17.0 MiB, over 16 MiB"]
    pytest.importorskip("torch")
    code = gpu_check.main(["--dry-run", "--out", str(out), "--only", "environment"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 1 and "weights.bin: 17.0 MiB, over 16 MiB" in report["returned_file_problems"]
    assert "over the device's return limits" in (out / "gpu_check.md").read_text()
    assert not (out / "gpu_check.log").exists()  # given up first, so that the report comes back


def test_cupy_is_found_under_its_cuda13_package_name(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("")
    info = tmp_path / "cupy_cuda13x-14.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cupy-cuda13x\nVersion: 14.2.0\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    assert gpu_check.probe(sys.executable, env, gpu_check.ENV_PROBE)["cupy"] == "cupy-cuda13x 14.2.0"


def _canned(runner, name: str, payload: dict | None, returncode: int = 0):  # type: ignore[no-untyped-def]
    """Runner.sh stand-in: the command 'writes' `payload` to its --json file (if any) and exits `returncode`."""
    def sh(step, cmd, timeout, cwd=None):  # type: ignore[no-untyped-def]
        step.commands.append(" ".join(cmd))
        if payload is not None and "--json" in cmd:
            Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(payload))
        return subprocess.CompletedProcess(cmd, returncode, "", "" if returncode == 0 else "error: refused")
    runner.sh = sh
    return runner


def test_goals_are_judged_from_the_benchmarks_json(tmp_path: Path) -> None:
    """The goals of issue 10, from canned figures (not measurements): score_map B=8 >= 50 % of the copy
    bandwidth; batch 1 <= 1.5 ms and >= 3x eager; batch 32 >= 3000 images/s."""
    runner = gpu_check.Runner(tmp_path, dry_run=False, budget=30, data=tmp_path, env={})
    row = {"op": "score_map", "batch": 8, "shape": "", "ms": 1.0, "vs_reference": 9.0, "gb_per_s": 1.0,
           "pct_of_peak": None}
    _canned(runner, "kernels", {"where": "canned", "copy_gb_per_s": 100.0, "rows": [
        dict(row, backend="triton", pct_of_copy=41.0), dict(row, backend="cuda", pct_of_copy=62.0)]})
    step = runner.run("kernels", 10, lambda st, b: gpu_check.step_kernels(runner, st, b))
    assert step.figures["goal score_map B=8 >= 50% of copy bandwidth"] == "cuda: 62% -> met"
    eager, graph = "torch eager", "fused + CUDA graphs, fp16"
    _canned(runner, "runtime", {"rows": [
        {"variant": eager, "batch": 1, "ms_per_call": 6.0, "images_per_s": 166.0, "vs_eager": 1.0},
        {"variant": graph, "batch": 1, "ms_per_call": 1.8, "images_per_s": 555.0, "vs_eager": 3.3},
        {"variant": graph, "batch": 32, "ms_per_call": 8.0, "images_per_s": 4000.0, "vs_eager": 4.0}]})
    step = runner.run("runtime", 10, lambda st, b: gpu_check.step_runtime(runner, st, b))
    goals = step.figures["goals"]
    assert goals["batch 1 <= 1.5 ms and >= 3x eager"].endswith("1.80 ms, 3.30x -> MISSED")
    assert goals["batch 32 >= 3000 images/s"].endswith("4000 img/s -> met")


def test_tiny_dataset_keeps_the_mvtec_layout(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    for sub in ("train/good", "test/good", "test/broken_large", "ground_truth/broken_large"):
        (src / sub).mkdir(parents=True)
    for i in range(3):
        for sub in ("train/good", "test/good", "test/broken_large"):
            Image.new("RGB", (16, 16)).save(src / sub / f"{i:03d}.png")
        Image.new("L", (16, 16)).save(src / "ground_truth/broken_large" / f"{i:03d}_mask.png")
    dst = gpu_check._tiny_dataset(src, tmp_path / "dst", train=2, test=1)
    from aminet_edge.data.datasets import load_dataset

    split = load_dataset(dst)
    assert len(split.train) == 2 and sorted(s.label for s in split.test) == [0, 1]
    assert [s.mask_path is not None for s in split.test if s.label == 1] == [True]


def test_failed_variants_and_exit_codes_fail_their_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime variant that failed, a runtime run without a figure, a precision that did not run and a
    build-engine that exited non-zero each make their step failed (they once read as ok)."""
    runner = gpu_check.Runner(tmp_path, dry_run=False, budget=30, data=tmp_path, env={})
    row = {"variant": "torch eager", "batch": 1, "ms_per_call": 6.0, "images_per_s": 166.0, "vs_eager": 1.0}
    for payload, code, reason in [
        ({"rows": [row], "skipped": {}, "failed": {"fused + CUDA graphs, bf16": "load: BundleError: x"}}, 1,
         "variants failed: fused + CUDA graphs, bf16: load: BundleError: x"),
        ({"rows": [], "skipped": {}, "failed": {}}, 1, "no variant gave a figure"),
        ({"rows": [row], "skipped": {"fused + CUDA graphs, fp32": "CUDA graphs need a CUDA device"}, "failed": {}},
         0, "variants skipped on the GPU"),
        (None, 1, "bench/runtime_cuda.py exited 1: error: refused"),
    ]:
        _canned(runner, "runtime", payload, code)
        (tmp_path / "runtime.json").unlink(missing_ok=True)
        step = runner.run("runtime", 10, lambda st, b: gpu_check.step_runtime(runner, st, b))
        assert step.status == "failed" and reason in step.reason, (payload, step.reason)
    _canned(runner, "runtime", {"rows": [row], "skipped": {}, "failed": {}}, 0)
    assert runner.run("runtime", 10, lambda st, b: gpu_check.step_runtime(runner, st, b)).status == "ok"

    runner.env["AMINET_TRAINED_BUNDLE"] = str(tmp_path)
    _canned(runner, "precision", {"precisions": {"fp32": {"image_auroc": 1.0, "scores": [1.0]},
                                                  "bf16": {"skipped": "ValueError: needs SM 80"}}})
    (tmp_path / "train" / "good").mkdir(parents=True)
    step = runner.run("precision_accuracy", 10, lambda st, b: gpu_check.step_precision(runner, st, b))
    assert step.status == "failed" and "bf16" in step.reason and "scores" not in step.figures["precisions"]["fp32"]

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt_rtx" else real_find_spec(name, *a))
    _canned(runner, "tensorrt_rtx", None, 1)
    step = runner.run("tensorrt_rtx", 10, lambda st, b: gpu_check.step_tensorrt_rtx(runner, st, b))
    assert step.status == "failed" and "build-engine --target auto exited 1: error: refused" in step.reason


KERNEL_MODULES = [str(ROOT / m) for m in gpu_check.KERNEL_MODULES]


def _collect(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args,
                           *KERNEL_MODULES], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line.strip() for line in proc.stdout.splitlines() if "::" in line}


def test_gpu_marker_selects_the_kernel_tests_cuda_and_compiled_triton_cases() -> None:
    """`pytest -m gpu` (what the pytest_gpu step runs) selects exactly the kernel tests' cases on the
    "cuda" and "triton-cuda" backends (tests/triton_interpreter.BACKENDS), none of the CPU backends'."""
    pytest.importorskip("torch")
    every, gpu = _collect(), _collect("-m", "gpu")
    on_gpu = {n for n in every if n.endswith(("-cuda]", "[cuda]", "[triton-cuda]"))}
    assert gpu == on_gpu
    for module in gpu_check.KERNEL_MODULES:  # every case of each kernel test, on both GPU backends
        cases = {n for n in every if n.startswith(module) and n.endswith("-cpp]")}
        assert len(cases) >= 10 and len({n for n in gpu if n.startswith(module)}) >= 2 * len(cases)
    assert not {n for n in gpu if n.endswith(("-cpp]", "-cpp-numpy]", "-triton]"))}
    assert len(every - gpu) > len(gpu) / 2  # the CPU cases exist and stay out


def test_pytest_outcomes_are_read_per_test(tmp_path: Path) -> None:
    """From a real `pytest -v -rfEs` run (and from its output cut short, as after a timeout)."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.parametrize('backend', ['cuda', 'cpp'])\n"
        "def test_skip(backend): pytest.skip('no CUDA GPU visible to torch')\n")
    (tests / "test_b.py").write_text("import not_a_module_anywhere\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "tests/"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    got = gpu_check.pytest_outcomes(proc.stdout + proc.stderr)
    assert got["counts"] == {"passed": 1, "failed": 1, "skipped": 2}
    assert got["failures"] == ["tests/test_a.py::test_bad"] and got["collection_errors"] == ["tests/test_b.py"]
    assert got["by_module"] == {"tests/test_a.py": 4}
    assert got["skips"] and "no CUDA GPU visible to torch" in got["skips"][0]
    cut = proc.stdout[:proc.stdout.index("test_bad")]  # killed while test_bad ran
    assert gpu_check.pytest_outcomes(cut)["counts"] == {"passed": 1}


def test_runtime_bench_loads_its_own_bundle_on_the_cpu(tmp_path: Path) -> None:
    """bench/runtime_cuda.py's bundle is written by the product's save path (weights recorded with their
    sha256), so Detector.load accepts it and the CPU run gives rows: eager and fused at each batch; the
    CUDA-graph variants are skipped by design on the CPU, none failed."""
    pytest.importorskip("torch")
    from aminet_edge.bundle import read_config

    spec = importlib.util.spec_from_file_location("runtime_cuda", ROOT / "bench" / "runtime_cuda.py")
    assert spec and spec.loader
    runtime_cuda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime_cuda)
    bundle = runtime_cuda.make_bundle(tmp_path / "bundle", "tiny")
    record = read_config(bundle).artifacts["weights"]
    assert record["sha256"] == hashlib.sha256((bundle / record["path"]).read_bytes()).hexdigest()
    result = runtime_cuda.main(["--device", "cpu", "--preset", "tiny", "--batches", "1", "2", "--repeats", "1",
                                "--no-append", "--json", str(tmp_path / "runtime.json")])
    assert result["failed"] == {} and json.loads((tmp_path / "runtime.json").read_text()) == result
    assert sorted((r["variant"].split(" (")[0].split(",")[0], r["batch"]) for r in result["rows"]) == [
        ("fused ops", 1), ("fused ops", 2), ("torch eager", 1), ("torch eager", 2)]
    assert all(r["ms_per_call"] > 0 for r in result["rows"])
    assert set(result["skipped"].values()) == {"CUDA graphs need a CUDA device"} and len(result["skipped"]) == 3
