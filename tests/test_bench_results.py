"""Benchmarks never change the source tree by default: their raw tables go to the ignored bench/out/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k != "AMINET_BENCH_RESULTS"}


def bench_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` run as a benchmark script `bench/x.py --flag` would run it, with bench/common importable."""
    prelude = "import sys; sys.argv = ['bench/x.py', '--flag']; sys.path.insert(0, 'bench'); import common\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT,
                          env={**ENV, **env}, check=True)


def test_append_result_writes_where_aminet_bench_results_says(tmp_path: Path) -> None:
    proc = bench_python("print(common.append_result('x', '| a |'))", AMINET_BENCH_RESULTS=str(tmp_path))
    written = tmp_path / "x.md"
    assert proc.stdout.splitlines() == ["| a |", str(written)] and f"appended to {written}" in proc.stderr
    text = written.read_text()
    assert "`python bench/x.py --flag`" in text and text.endswith("| a |\n")


def test_by_default_results_go_to_a_folder_git_ignores() -> None:
    default = Path(bench_python("print(common.RESULTS)").stdout.strip())
    assert default == ROOT / "bench" / "out"
    if not (shutil.which("git") and (ROOT / ".git").exists()):
        pytest.skip("not a git checkout: cannot ask git whether bench/out/ is ignored")
    assert subprocess.run(["git", "check-ignore", "-q", str(default / "x.md")], cwd=ROOT).returncode == 0
