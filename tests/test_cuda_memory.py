"""The TensorRT backend's CUDA buffers, copies, stream and graph capture (runtime/backends/cuda_memory.py),
without an engine: on a GPU only (`-m gpu`), each implementation that imports (cuda-python, pycuda).

Round trip host -> device -> host through pinned buffers must return the bytes exactly; a captured
graph of the two copies, replayed after the pinned input changed, must copy the new contents (what the
backend's per-batch graphs rely on: buffers bound once, contents changing between replays).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

IMPLEMENTATIONS = [("cuda-python", "cuda.bindings"), ("pycuda", "pycuda")]


def _gpu_reason() -> str | None:
    from aminet_edge.export.trt_compat import gpus

    return None if gpus() else "no CUDA GPU (driver API reports none)"


@pytest.mark.gpu
@pytest.mark.parametrize("name, module", IMPLEMENTATIONS, ids=[n for n, _ in IMPLEMENTATIONS])
def test_buffers_copies_and_graph_replay(name: str, module: str) -> None:
    reason = _gpu_reason()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed")
    from aminet_edge.runtime.backends.cuda_memory import CudaMemory

    memory = CudaMemory.create(0, prefer=name)
    if memory.name != name:
        pytest.skip(f"{name} unavailable here ({memory.name} was chosen)")
    rng = np.random.default_rng(0)
    with memory.activate():
        host_in = memory.pinned((4, 1000), np.float32)
        host_out = memory.pinned((4, 1000), np.float32)
        device = memory.alloc(host_in.nbytes)
        host_in[...] = rng.standard_normal(host_in.shape, dtype=np.float32)
        memory.htod(device, host_in)
        memory.dtoh(host_out, device)
        memory.synchronize()
        np.testing.assert_array_equal(host_out, host_in)
        if memory.supports_graphs:
            memory.begin_capture()
            memory.htod(device, host_in, host_in.nbytes // 2)  # the first two rows only
            memory.dtoh(host_out, device, host_in.nbytes // 2)
            graph = memory.end_capture()
            for _ in range(2):
                host_in[...] = rng.standard_normal(host_in.shape, dtype=np.float32)
                host_out[...] = 0
                memory.launch(graph)
                memory.synchronize()
                np.testing.assert_array_equal(host_out[:2], host_in[:2])
                assert not host_out[2:].any()
        memory.close()
