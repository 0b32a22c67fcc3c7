"""The torch backend's CUDA data path, exercised on the CPU where it can be, and on a GPU where one exists.

On the CPU (no GPU here):
- device preprocessing (`device_preprocess=True`: raw frames in, resize + normalise in torch) against the
  host path (PIL resize in numpy) on the same bundle: tolerance as test_detector's assert_agree (rtol 1e-4),
  since torch's antialiased bilinear filter is PIL's and differs by float rounding (~1e-7) only;
- `inputs.to_frame`: 8-bit inputs stay uint8 and equal to_rgb * 255 exactly, others stay float32;
- bf16 autocast (CPU autocast supports it): close to fp32 (scores within 5 %, token masks >= 90 % equal:
  bf16 keeps 8 bits of mantissa, ~0.4 % per op) and not identical (the option is in effect);
- the CUDA-graph bookkeeping (one capture per batch size, static buffers copied in, outputs copied out
  before the next replay) with the CUDA capture replaced by an eager "graph" over the same static buffers.
On a GPU (`-m gpu`): frames + fp32 + CUDA graphs against the CPU reference, and fp16 / bf16 close to fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_detector import assert_agree, detector, generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.runtime.backends import create_backend  # noqa: E402
from aminet_edge.runtime.backends import torch_backend as tb  # noqa: E402
from aminet_edge.runtime.inputs import to_frame, to_rgb  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


def mixed_inputs(tmp_path: Path) -> list:  # type: ignore[type-arg]
    """uint8 RGB of several sizes, a BGRA frame, a grey frame, a float frame and an 8-bit PNG file."""
    from PIL import Image

    items: list = generated_images()  # type: ignore[type-arg]
    rng = np.random.default_rng(3)
    items.append(np.concatenate([items[1], np.full(items[1].shape[:2] + (1,), 255, np.uint8)], axis=2))  # RGBA
    items.append(rng.integers(0, 256, (90, 70), dtype=np.uint8))
    items.append(rng.random((80, 96, 3), dtype=np.float32))
    png = tmp_path / "frame.png"
    Image.fromarray(items[2]).save(png)
    items.append(str(png))
    return items


def test_to_frame_keeps_8_bit_inputs_uint8(tmp_path: Path) -> None:
    from PIL import Image

    for item in mixed_inputs(tmp_path):
        for bgr in (False, True):
            if isinstance(item, str) and bgr:
                continue
            frame, rgb = to_frame(item, 0, bgr), to_rgb(item, 0, bgr)
            eight_bit = isinstance(item, str) or item.dtype == np.uint8
            assert frame.dtype == (np.uint8 if eight_bit else np.float32) and frame.shape == rgb.shape
            scaled = frame.astype(np.float32) / np.float32(255.0) if eight_bit else frame
            np.testing.assert_array_equal(scaled, rgb)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 40_000, np.uint16)).save(sixteen)
    assert to_frame(str(sixteen)).dtype == np.float32  # 16-bit keeps its precision


def test_device_preprocessing_matches_host_path(bundle: Path, tmp_path: Path) -> None:
    items = mixed_inputs(tmp_path)
    host = detector(bundle, "torch", ops_backend="reference")
    dev = Detector.load(bundle, backend="torch", ops_backend="reference", device_preprocess=True)
    assert dev._backend.takes_frames and not host._backend.takes_frames
    assert "preprocess on device" in dev.backend_description
    for got, want in zip(dev.predict(items), host.predict(items)):
        assert_agree(got, want)
    same_size = generated_images(3)[:1] * 3  # one upload for the whole batch
    for got, want in zip(dev.predict(same_size), host.predict(same_size)):
        assert_agree(got, want)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 or float32"):
        dev._backend.run_frames([np.zeros((3, 8, 8), np.float64)])


def test_bf16_autocast_is_close_to_fp32(bundle: Path) -> None:
    images = generated_images()
    fp32 = detector(bundle, "torch").predict(images)
    bf16 = Detector.load(bundle, backend="torch", precision="bf16").predict(images)
    assert bf16[0].ok and Detector.load(bundle, backend="torch", precision="bf16").precision == "bf16"
    scores32 = np.array([r.score for r in fp32])
    scores16 = np.array([r.score for r in bf16])
    np.testing.assert_allclose(scores16, scores32, rtol=5e-2)
    assert not np.array_equal(scores16, scores32), "bf16 gave bit-identical scores: autocast not in effect"
    agree = np.mean([np.mean(a.token_mask == b.token_mask) for a, b in zip(bf16, fp32)])
    assert agree >= 0.9
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        Detector.load(bundle, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        Detector.load(bundle, backend="torch", cuda_graph=True)


def test_graph_bookkeeping_per_batch_size(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two predicts of 6 images at batch size 4 (backend batches 4, 2, 4, 2): one capture per size, replays
    copy the new images into the static input, and returned arrays survive later replays."""
    captured: list[int] = []

    def fake_capture(self: tb.TorchBackend, batch: int) -> tb._Captured:
        captured.append(batch)
        static_in = torch.zeros((batch, 3, self.size, self.size))
        static_out = self._packed(static_in)  # the "capture": output buffer allocated once

        def replay() -> None:  # what a graph replay does: recompute into the same output buffer
            static_out.copy_(self._packed(static_in))
        return tb._Captured(static_in, static_out, replay)

    monkeypatch.setattr(tb.TorchBackend, "_capture", fake_capture)
    backend = create_backend("torch", bundle, read_config(bundle), "cpu", device_preprocess=True)
    backend.cuda_graph = True  # the constructor refuses it on the CPU; the bookkeeping is device-free
    det = Detector(backend, read_config(bundle), bundle, batch_size=4)
    eager = detector(bundle, "torch")
    images = generated_images()  # 6 -> batches of 4 and 2
    first = det.predict(images)
    kept = [r.anomaly_map.copy() for r in first]
    again = det.predict(images[::-1])
    assert captured == [4, 2]
    for got, want in zip(first, eager.predict(images)):
        assert_agree(got, want)
    for got, want in zip(again, eager.predict(images[::-1])):
        assert_agree(got, want)
    for r, k in zip(first, kept):
        np.testing.assert_array_equal(r.anomaly_map, k)


# ---- GPU ---------------------------------------------------------------------------------------------
def _need_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_cuda_frames_fp32_match_cpu_reference(bundle: Path, tmp_path: Path, cuda_graph: bool) -> None:
    _need_gpu()
    items = mixed_inputs(tmp_path)
    want = detector(bundle, "torch", ops_backend="reference").predict(items)
    det = Detector.load(bundle, backend="torch", device="cuda", cuda_graph=cuda_graph, batch_size=4)
    assert det._backend.takes_frames
    for _ in range(2):  # the second pass replays the captured graphs
        for got, ref in zip(det.predict(items), want):
            assert_agree(got, ref)
    det.close()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_close_to_fp32(bundle: Path, precision: str) -> None:
    _need_gpu()
    images = generated_images()
    fp32 = Detector.load(bundle, backend="torch", device="cuda").predict(images)
    half = Detector.load(bundle, backend="torch", device="cuda", precision=precision, cuda_graph=True).predict(images)
    np.testing.assert_allclose([r.score for r in half], [r.score for r in fp32], rtol=5e-2)
