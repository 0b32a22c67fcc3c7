"""bench/gpu_check.py, the GPU proof script, tested without a GPU.

- the runner: every outcome (ok, failed, timeout, skipped, global budget spent) reaches the report, in
  markdown and JSON, with the reason;
- the offline packages: only modules this Python cannot import are put on PYTHONPATH;
- the dry run of the cheap steps in-process (`--dry-run --only environment,tensorrt_rtx`), and the
  goals judged from the benchmarks' JSON (canned figures: the parsing is under test, not a GPU);
- the bottle-data preparation copies an MVTec-layout subset.
The full dry run (`python bench/gpu_check.py --dry-run`, ~4 min on 2 cores) is run by hand before a GPU run.
"""

from __future__ import annotations

import importlib.util
import json
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
        runner.sh(step, [sys.executable, "-c", "import time; time.sleep(5)"], 0.5)

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
    assert report["steps"][0]["figures"] == {"x": 1.5}
    text = md.read_text()
    assert "DRY RUN" in text and "| c | failed |" in text and "boom" in text


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
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "nonsense"])


def _canned(runner, name: str, payload: dict):  # type: ignore[no-untyped-def]
    """Runner.sh stand-in: the benchmark 'writes' `payload` to its --json file and succeeds."""
    import subprocess

    def sh(step, cmd, timeout, cwd=None):  # type: ignore[no-untyped-def]
        step.commands.append(" ".join(cmd))
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(payload))
        return subprocess.CompletedProcess(cmd, 0, "", "")
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
