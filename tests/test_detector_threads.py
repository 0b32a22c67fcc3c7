"""One Detector shared by several threads gives exactly the results of serial use."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from test_detector import CPU_BACKENDS, generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.runtime.backends import backend_status  # noqa: E402

THREADS = 4
ROUNDS = 3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_threads_match_serial(tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    bundle = shared_bundle(tmp_path_factory)
    reason = backend_status(backend, bundle, read_config(bundle), "cpu")
    if reason is not None:
        pytest.skip(reason)
    det = Detector.load(bundle, backend=backend)
    images = generated_images(8, seed=3)
    serial = [det.predict(img) for img in images]
    serial_batch = det.predict(images[:3])

    start = threading.Barrier(THREADS)

    def work(worker: int) -> list[tuple[int, object]]:
        start.wait()  # all threads hit the detector at once
        out = []
        for r in range(ROUNDS):
            for k in range(len(images)):
                i = (k + worker + r) % len(images)  # each thread in its own order
                out.append((i, det.predict(images[i])))
            out.append((-1, det.predict(images[:3])))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        everything = [item for chunk in pool.map(work, range(THREADS)) for item in chunk]
    assert len(everything) == THREADS * ROUNDS * (len(images) + 1)
    for i, got in everything:
        pairs = zip(got, serial_batch) if i < 0 else [(got, serial[i])]
        for a, b in pairs:  # type: ignore[misc]
            assert a.source == b.source and a.score == b.score and a.is_anomaly == b.is_anomaly
            assert np.array_equal(a.anomaly_map, b.anomaly_map) and np.array_equal(a.mask, b.mask)
            assert np.array_equal(a.token_mask, b.token_mask)
