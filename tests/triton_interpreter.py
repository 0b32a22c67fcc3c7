"""Running a kernel test's cases on Triton's interpreter, in one subprocess per test module.

Triton reads TRITON_INTERPRET when first imported, so the interpreted run cannot share the pytest
process: the test module re-runs itself under run_name WORKER with the variable set, computes every case
(`save_case_outputs`), and the parent loads the .npz (`interpreted_outputs`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

WORKER = "__triton_worker__"
# every kernel test runs each case on these backends against the reference (cpp-numpy: the torch-free
# numpy entry of the C++ kernels; triton: interpreted on the CPU; the GPU ones only where a GPU is)
BACKENDS = [
    "cpp",
    "cpp-numpy",
    "triton",
    pytest.param("triton-cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", marks=pytest.mark.gpu),
]


def save_case_outputs(cases: dict[str, Callable[[], dict]], run: Callable[[dict], dict[str, np.ndarray]],
                      out_path: str) -> None:
    """Subprocess body: run(case) for every case, outputs saved as "<case>/<key>" (or "<case>/error")."""
    results = {}
    for name, build in cases.items():
        try:
            for key, value in run(build()).items():
                results[f"{name}/{key}"] = value
        except Exception:  # noqa: BLE001 - reported by the test of that case
            results[f"{name}/error"] = np.array(traceback.format_exc())
    np.savez(out_path, **results)


def interpreted_outputs(test_file: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Run `test_file` as WORKER with TRITON_INTERPRET=1 and return its saved outputs."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'aminet-edge[gpu]')")
    test = Path(test_file).resolve()
    out = tmp_path_factory.mktemp("triton") / f"{test.stem}.npz"
    path = os.pathsep.join([str(test.parent.parent), str(test.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    code = f"import runpy; runpy.run_path({str(test)!r}, run_name={WORKER!r})"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"interpreted Triton subprocess failed:\n{proc.stderr[-4000:]}")
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def need_gpu() -> None:
    """Skip unless torch sees a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
