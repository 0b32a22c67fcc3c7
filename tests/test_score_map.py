"""score_map: every backend against reference.score_map, over shapes and edge cases.

Backends as in test_adaptive_mask.py: "cpp" (CPU torch tensors through backend="auto"), "cpp-numpy" (numpy
arrays), "triton" (Triton's interpreter, one subprocess per module with TRITON_INTERPRET=1 set before
triton is imported), and on a GPU "triton-cuda" and "cuda" (marked gpu, skipped elsewhere).

Tolerances, and why:
- amap: |got - ref| <= 1e-4 * |ref| + 1e-5 * max|ref|. The fast backends apply upsampling + blur as one
  product A_h @ M @ A_w^T with the smoothing matrices (the same linear map as the reference's interpolate
  then two 1-D convolutions, rounded differently; A is built in double and rounded once), and sum the
  channels in their own order: float32 relative differences of ~1e-6 for C <= 1792. The absolute part
  covers cells where recon ~ feat: 1 - cos then cancels to ~1e-7 absolute noise in every backend.
- score: rtol 1e-4 (same reasons; the C++ backend reduces the map in double, the reference in float32).
The matrices themselves (C++ smoothing_matrix vs reference.smoothing_matrix) agree to 1e-6 absolute.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aminet_edge import ops  # noqa: E402
from aminet_edge.ops import reference  # noqa: E402
from triton_interpreter import BACKENDS, WORKER, interpreted_outputs, need_gpu, save_case_outputs  # noqa: E402

RTOL_MAP = 1e-4
ATOL_MAP = 1e-5  # times max |amap|
RTOL_SCORE = 1e-4


def _random(B, C, h, w, out_hw, sigma=4.0, image_score="std", seed=0, dtype=torch.float32, noise=0.5) -> dict:
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(B, C, h, w, generator=g)
    recon = feat + noise * torch.randn(B, C, h, w, generator=g)
    return dict(feat=feat.to(dtype), recon=recon.to(dtype), out_hw=out_hw, sigma=sigma, image_score=image_score)


def _zero_vectors() -> dict:
    # zero feat and recon (cos = 0 / (EPS * EPS) = 0, so 1 - cos = 1 while mse = 0), zero recon only
    # (cos = 0), and recon == feat (mse = 0, 1 - cos ~ 0)
    c = _random(2, 6, 8, 8, (29, 29), sigma=1.5, seed=3)
    c["feat"][:, :, :3] = 0.0
    c["recon"][:, :, :3] = 0.0
    c["recon"][:, :, 3:5] = 0.0
    c["recon"][:, :, 6:] = c["feat"][:, :, 6:]
    return c


def _large() -> dict:
    c = _random(2, 12, 6, 10, (20, 33), sigma=2.0, seed=4)
    g = torch.Generator().manual_seed(5)
    scale = 1e3 + 9e3 * torch.rand(2, 1, 6, 10, generator=g)
    c["feat"], c["recon"] = c["feat"] * scale, c["recon"] * scale
    return c


CASES = {
    "random": lambda: _random(2, 5, 7, 9, (23, 31), sigma=1.0, seed=1),
    "b1_square": lambda: _random(1, 64, 16, 16, (64, 64), sigma=4.0, seed=2),
    "paper_channels": lambda: _random(1, 1792, 16, 16, (64, 64), sigma=4.0, seed=6, noise=0.2),  # WRN50 C
    "max_score": lambda: _random(3, 7, 5, 11, (17, 40), sigma=2.0, image_score="max", seed=7),
    "no_upsample_no_blur": lambda: _random(2, 4, 9, 13, (9, 13), sigma=0.0, seed=8),
    "tiny_sigma": lambda: _random(1, 3, 4, 5, (15, 19), sigma=0.1, seed=9),  # radius 0
    "single_channel": lambda: _random(2, 1, 6, 6, (24, 24), sigma=1.0, seed=10),  # cos = +-1
    "single_cell": lambda: _random(1, 8, 1, 1, (12, 12), sigma=1.0, seed=11),  # in_size 1
    "radius_beyond_map": lambda: _random(1, 4, 3, 4, (6, 9), sigma=2.0, seed=13),  # radius 8: reflected twice
    "zero_vectors": _zero_vectors,
    "large_magnitude": _large,
    "fp16": lambda: _random(2, 24, 8, 12, (32, 48), sigma=2.0, seed=12, dtype=torch.float16),
}

def _args(c: dict) -> tuple:
    return c["feat"], c["recon"], c["out_hw"], c["sigma"], c["image_score"]


def _triton_case(c: dict) -> dict:
    """One case on the triton backend (runs in the interpreted subprocess)."""
    amap, score = ops.score_map(*_args(c), backend="triton")
    return {"amap": amap.numpy(), "score": score.numpy()}


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The triton backend's outputs for every case, from one interpreted subprocess."""
    return interpreted_outputs(__file__, tmp_path_factory)


def _run(backend: str, c: dict, request: pytest.FixtureRequest):
    """The backend's (amap, score) as CPU torch tensors."""
    feat, recon, out_hw, sigma, image_score = _args(c)
    if backend in ("cpp", "cpp-numpy"):
        from aminet_edge.ops import cpu

        reason = cpu.unavailable_reason()
        if reason:
            pytest.skip(reason)
        if backend == "cpp":
            out = ops.score_map(feat, recon, out_hw, sigma, image_score)  # auto must choose cpp
        else:
            out = ops.score_map(feat.numpy(), recon.numpy(), out_hw, sigma, image_score)
            assert all(isinstance(o, np.ndarray) for o in out)
            out = tuple(torch.from_numpy(o) for o in out)
        assert ops.last_backend("score_map") == "cpp"
        return out
    if backend == "triton":
        results = request.getfixturevalue("triton_interpreted")
        case = request.node.callspec.params["case"]
        if f"{case}/error" in results:
            pytest.fail(f"triton backend raised:\n{results[f'{case}/error']}")
        return torch.from_numpy(results[f"{case}/amap"]), torch.from_numpy(results[f"{case}/score"])
    need_gpu()
    name = "triton" if backend == "triton-cuda" else "cuda"
    if name == "cuda":
        from aminet_edge.ops import cuda

        reason = cuda.unavailable_reason()
        if reason:
            pytest.skip(reason)
    out = ops.score_map(feat.cuda(), recon.cuda(), out_hw, sigma, image_score, backend=name)
    return tuple(o.cpu() for o in out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_score_map_matches_reference(backend: str, case: str, request: pytest.FixtureRequest) -> None:
    c = CASES[case]()
    ref_map, ref_score = (o.numpy() for o in reference.score_map(*_args(c)))
    amap, score = (o.numpy() for o in _run(backend, c, request))
    assert amap.dtype == np.float32 and score.dtype == np.float32
    assert amap.shape == ref_map.shape and score.shape == ref_score.shape
    np.testing.assert_allclose(amap, ref_map, rtol=RTOL_MAP, atol=ATOL_MAP * float(np.abs(ref_map).max()))
    np.testing.assert_allclose(score, ref_score, rtol=RTOL_SCORE, atol=1e-7 * float(np.abs(ref_map).max()))


@pytest.mark.parametrize("sizes", [(64, 256, 4.0), (7, 23, 1.0), (9, 9, 0.0), (1, 12, 1.0), (5, 5, 0.1), (16, 3, 0.0),
                                   (4, 8, 2.0), (3, 5, 3.0)])  # the last two: radius >= out_size
def test_smoothing_matrix_matches_reference(sizes: tuple) -> None:
    """The C++ builder of A (csrc/include/aminet/score_map.h) against reference.smoothing_matrix."""
    from aminet_edge.ops import cpu

    reason = cpu.unavailable_reason()
    if reason:
        pytest.skip(reason)
    in_size, out_size, sigma = sizes
    got = cpu.smoothing_matrix(in_size, out_size, sigma)
    want = reference.smoothing_matrix(in_size, out_size, sigma).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


if __name__ == WORKER:
    save_case_outputs(CASES, _triton_case, sys.argv[1])
