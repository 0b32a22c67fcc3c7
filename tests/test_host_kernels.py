"""The Detector's host steps on the C++ kernels (aminet_edge.runtime.host_kernels) against their
independent references: Pillow's resize (aminet_edge.data.images.preprocess) and detector.resize_map's
numpy arithmetic, bit for bit; and a Detector gives identical results with the kernels and without."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aminet_edge.data.images import preprocess as pil_preprocess
from aminet_edge.runtime import host_kernels
from aminet_edge.runtime import detector as detector_module

pytestmark = pytest.mark.skipif(host_kernels.kernels() is None,
                                reason="aminet_edge._cpu_kernels not built, or built before the host kernels")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (H, W, S): the 2x shrink of the benchmarks, odd ratios both ways, enlarging, identity, a thin strip
# (Pillow 13 runs the vertical pass first when the height shrinks far more than the width)
SIZES = [(512, 512, 256), (480, 640, 256), (100, 90, 256), (1000, 700, 224), (256, 256, 256), (37, 500, 64),
         (900, 40, 32)]


@pytest.mark.parametrize("h, w, size", SIZES)
def test_preprocess_is_pillows_to_the_bit(h: int, w: int, size: int) -> None:
    rng = np.random.default_rng(h * 7 + w)
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.float32) / np.float32(255)
    want = pil_preprocess(rgb, size, MEAN, STD)
    got = host_kernels.preprocess(rgb, size, MEAN, STD)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, size, size)
    np.testing.assert_array_equal(got, want)


def test_preprocess_reads_a_strided_array() -> None:
    """A channel-reversed view (BGR -> RGB without a copy) is read as the values it shows."""
    rgb = np.random.default_rng(3).random((64, 80, 3), dtype=np.float32)
    view = rgb[:, :, ::-1]
    np.testing.assert_array_equal(host_kernels.preprocess(view, 32, MEAN, STD),
                                  pil_preprocess(np.ascontiguousarray(view), 32, MEAN, STD))


@pytest.mark.parametrize("src, dst", [((256, 256), (512, 512)), ((64, 64), (480, 640)), ((33, 17), (100, 90)),
                                      ((256, 256), (100, 300)), ((8, 8), (8, 9))])
def test_resize_map_kernel_equals_numpy(src: tuple[int, int], dst: tuple[int, int],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    amap = np.random.default_rng(sum(src)).random(src, dtype=np.float32) * 40
    got = detector_module.resize_map(amap, *dst)
    monkeypatch.setattr(host_kernels, "kernels", lambda: None)
    want = detector_module.resize_map(amap, *dst)
    assert got.shape == dst and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_detector_results_equal_without_kernels(tmp_path_factory: pytest.TempPathFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from test_detector import generated_images, shared_bundle

    from aminet_edge.runtime import Detector

    bundle: Path = shared_bundle(tmp_path_factory)
    images = generated_images()
    det = Detector.load(bundle, backend="onnxruntime", precision="fp32")
    fast = det.predict(images)
    monkeypatch.setattr(host_kernels, "kernels", lambda: None)
    slow = det.predict(images)
    det.close()
    for a, b in zip(fast, slow):  # type: ignore[arg-type]
        assert a.score == b.score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        np.testing.assert_array_equal(a.token_mask, b.token_mask)
