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
The token-map cases (amap += token_weight * upsample_smooth(token_map), token grid (gh, gw) unlike feat's)
use the same tolerances: the token term is one more A_hg @ D @ A_wg^T product. token_weight = 0 must give
exactly the map without a token map (0 * a finite term adds nothing in any rounding).
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


def _with_tokens(c: dict, gh: int, gw: int, weight: float, seed: int, dtype=torch.float32) -> dict:
    """Case `c` plus a (B, gh, gw) token map of positive distances (the guide's are norms) and its weight."""
    g = torch.Generator().manual_seed(seed)
    c["token_map"] = (3.0 * torch.rand(c["feat"].shape[0], gh, gw, generator=g)).to(dtype)
    c["token_weight"] = weight
    return c


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
    # token map on its own grid: non-square, coarser or finer than feat's, fp16, gh = 1, no blur, weight 0
    "tokens": lambda: _with_tokens(_random(2, 5, 8, 12, (32, 48), sigma=2.0, seed=14), 3, 5, 0.7, seed=15),
    "tokens_max": lambda: _with_tokens(_random(3, 6, 7, 9, (23, 31), sigma=1.0, image_score="max", seed=16), 6, 4,
                                       1.5, seed=17),
    "tokens_paper_grid": lambda: _with_tokens(_random(1, 8, 64, 64, (256, 256), sigma=4.0, seed=18), 16, 16, 0.5,
                                              seed=19),  # feat 64 x 64, ViT token grid 16 x 16
    "tokens_finer_than_feat": lambda: _with_tokens(_random(2, 4, 4, 5, (20, 25), sigma=1.0, seed=20), 10, 7, 2.0,
                                                   seed=21),
    "tokens_fp16": lambda: _with_tokens(_random(2, 24, 8, 12, (32, 48), sigma=2.0, seed=12, dtype=torch.float16), 4,
                                        6, 0.3, seed=22, dtype=torch.float16),
    "tokens_single_row": lambda: _with_tokens(_random(2, 3, 6, 6, (24, 24), sigma=1.0, seed=23), 1, 3, 1.0, seed=24),
    "tokens_no_blur": lambda: _with_tokens(_random(2, 4, 9, 13, (9, 13), sigma=0.0, seed=8), 3, 2, 0.8, seed=25),
    "tokens_weight_zero": lambda: _with_tokens(CASES["random"](), 5, 3, 0.0, seed=26),  # must equal "random"
}

def _args(c: dict) -> tuple:
    return c["feat"], c["recon"], c["out_hw"], c["sigma"], c["image_score"]


def _token_kwargs(c: dict, to=lambda t: t) -> dict:
    """token_map (through `to`) and token_weight of a case, or nothing for a case without a token map."""
    return {"token_map": to(c["token_map"]), "token_weight": c["token_weight"]} if "token_map" in c else {}


def _triton_case(c: dict) -> dict:
    """One case on the triton backend (runs in the interpreted subprocess)."""
    amap, score = ops.score_map(*_args(c), backend="triton", **_token_kwargs(c))
    return {"amap": amap.numpy(), "score": score.numpy()}


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The triton backend's outputs for every case, from one interpreted subprocess."""
    return interpreted_outputs(__file__, tmp_path_factory)


def _run(backend: str, case: str, request: pytest.FixtureRequest):
    """The backend's (amap, score) for CASES[case] as CPU torch tensors."""
    c = CASES[case]()
    feat, recon, out_hw, sigma, image_score = _args(c)
    if backend in ("cpp", "cpp-numpy"):
        from aminet_edge.ops import cpu

        reason = cpu.unavailable_reason()
        if reason:
            pytest.skip(reason)
        if backend == "cpp":
            out = ops.score_map(feat, recon, out_hw, sigma, image_score, **_token_kwargs(c))  # auto must choose cpp
        else:
            out = ops.score_map(feat.numpy(), recon.numpy(), out_hw, sigma, image_score,
                                **_token_kwargs(c, lambda t: t.numpy()))
            assert all(isinstance(o, np.ndarray) for o in out)
            out = tuple(torch.from_numpy(o) for o in out)
        assert ops.last_backend("score_map") == "cpp"
        return out
    if backend == "triton":
        results = request.getfixturevalue("triton_interpreted")
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
    out = ops.score_map(feat.cuda(), recon.cuda(), out_hw, sigma, image_score, backend=name,
                        **_token_kwargs(c, lambda t: t.cuda()))
    return tuple(o.cpu() for o in out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_score_map_matches_reference(backend: str, case: str, request: pytest.FixtureRequest) -> None:
    c = CASES[case]()
    ref_map, ref_score = (o.numpy() for o in reference.score_map(*_args(c), **_token_kwargs(c)))
    amap, score = (o.numpy() for o in _run(backend, case, request))
    assert amap.dtype == np.float32 and score.dtype == np.float32
    assert amap.shape == ref_map.shape and score.shape == ref_score.shape
    np.testing.assert_allclose(amap, ref_map, rtol=RTOL_MAP, atol=ATOL_MAP * float(np.abs(ref_map).max()))
    np.testing.assert_allclose(score, ref_score, rtol=RTOL_SCORE, atol=1e-7 * float(np.abs(ref_map).max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_weight_zero_equals_no_token_map(backend: str, request: pytest.FixtureRequest) -> None:
    without = _run(backend, "random", request)
    with_zero = _run(backend, "tokens_weight_zero", request)
    for a, b in zip(with_zero, without):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _valid() -> dict:
    c = _random(2, 3, 4, 6, (8, 12), sigma=1.0)
    return dict(feat=c["feat"], recon=c["recon"], out_hw=(8, 12), sigma=1.0, backend="reference",
                token_map=torch.rand(2, 3, 5), token_weight=0.5)


@pytest.mark.parametrize("change, message", [
    (dict(token_map=torch.rand(2, 15)), r"\(B, gh, gw\)"),
    (dict(token_map=torch.rand(2, 3, 5, 1)), r"\(B, gh, gw\)"),
    (dict(token_map=torch.rand(3, 3, 5)), "feat's B = 2"),
    (dict(token_map=torch.rand(2, 0, 5)), "gh, gw >= 1"),
    (dict(token_map=np.random.rand(2, 3, 5).astype(np.float32)), "live where feat does .cpu., got numpy"),
    (dict(token_map=torch.rand(2, 3, 5, device="meta")), "live where feat does .cpu., got meta"),
    (dict(token_weight=-0.1), "finite float >= 0"),
    (dict(token_weight=float("nan")), "finite float >= 0"),
    (dict(token_weight=float("inf")), "finite float >= 0"),
    (dict(token_weight="heavy"), "finite float >= 0"),
    (dict(token_weight=None), "finite float >= 0"),
], ids=["2d", "4d", "batch", "empty_grid", "numpy_for_torch", "other_device", "negative", "nan", "inf", "str",
        "none"])
def test_token_map_arguments_are_validated(change: dict, message: str) -> None:
    kwargs = _valid()
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        ops.score_map(**kwargs)


def test_token_map_must_be_numpy_for_numpy_feat() -> None:
    kwargs = _valid()
    kwargs.update(feat=kwargs["feat"].numpy(), recon=kwargs["recon"].numpy(), backend="auto")
    amap, score = ops.score_map(**{**kwargs, "token_map": kwargs["token_map"].numpy()})  # the valid call runs
    assert amap.shape == (2, 8, 12) and score.shape == (2,)
    with pytest.raises(ValueError, match="live where feat does .numpy., got cpu"):
        ops.score_map(**kwargs)


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
