"""scripts/torch.sh (sourced by scripts/demo.sh and scripts/test.sh) keeps a torch that is installed and
installs torch==2.13.0 only where none imports: the right build per machine, checked with a fake `python`
and `nvidia-smi` on PATH that record what would be run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_PYTHON = """#!/bin/bash
# "import torch" succeeds only when FAKE_TORCH is set; pip calls are logged, never run
if [ "$1" = "-m" ]; then echo "$*" >>"$FAKE_LOG"; exit "${FAKE_PIP_RC:-0}"; fi
if [ -z "${FAKE_TORCH:-}" ]; then exit 1; fi
case "$2" in "import torch") ;; *"'torch=="*) echo "torch==$FAKE_TORCH";; *print*) echo "$FAKE_TORCH";; esac
"""


def source_torch_sh(tmp_path: Path, torch: str | None, gpu: bool = False, jetson: bool = False,
                    pip_rc: int = 0) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/bash\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    release = tmp_path / "nv_tegra_release"
    if jetson:
        release.write_text("# R36 (release), REVISION: 4.3\n")
    log = tmp_path / "pip.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "AMINET_TEGRA_RELEASE": str(release),
           "FAKE_PIP_RC": str(pip_rc), "HOME": os.environ.get("HOME", "/tmp")}
    if torch:
        env["FAKE_TORCH"] = torch
    script = 'source scripts/torch.sh; cat "$TORCH_CONSTRAINTS"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_installed_torch_is_kept_and_pinned(tmp_path: Path) -> None:
    jetson_wheel = "2.5.0a0+872d972e41.nv24.08"  # NVIDIA's JetPack 6 wheel
    proc, pip = source_torch_sh(tmp_path, jetson_wheel, jetson=True)
    assert proc.returncode == 0, proc.stderr
    assert pip == [] and f"using the installed torch {jetson_wheel}" in proc.stdout
    assert proc.stdout.strip().endswith(f"torch=={jetson_wheel}")  # the constraints file


def test_missing_torch_gets_the_build_for_the_machine(tmp_path: Path) -> None:
    (tmp_path / "gpu").mkdir()
    proc, pip = source_torch_sh(tmp_path / "gpu", None, gpu=True)
    assert proc.returncode == 0 and pip == ["-m pip install -q torch==2.13.0"]  # PyPI: its wheels carry CUDA
    (tmp_path / "cpu").mkdir()
    proc, pip = source_torch_sh(tmp_path / "cpu", None)
    assert proc.returncode == 0
    assert pip == ["-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"]
    (tmp_path / "offline").mkdir()
    proc, pip = source_torch_sh(tmp_path / "offline", None, pip_rc=1)
    assert pip[-1] == "-m pip install -q torch==2.13.0"  # the CPU index unreachable: PyPI is tried
    (tmp_path / "jetson").mkdir()
    proc, pip = source_torch_sh(tmp_path / "jetson", None, jetson=True)
    assert proc.returncode == 1 and pip == [] and "install NVIDIA's wheel" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_setup_scripts_shellcheck_clean() -> None:
    scripts = sorted(str(p) for p in (ROOT / "scripts").glob("*.sh"))
    proc = subprocess.run(["shellcheck", "--severity=style", "--external-sources", "-x", *scripts],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
