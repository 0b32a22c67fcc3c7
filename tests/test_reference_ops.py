"""The reference ops against independent NumPy/SciPy computations (loops written from the paper's text)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from aminet_edge.ops import reference


def loop_adaptive_mask(tokens: np.ndarray, centers: np.ndarray, lam: float):
    """Per image, per cluster, as the authors' Python loops do (with '>' at the boundary)."""
    b, length, _ = tokens.shape
    mask = np.zeros((b, length), bool)
    dist = np.zeros((b, length))
    assign = np.zeros((b, length), int)
    for i in range(b):
        for j in range(length):
            t = tokens[i, j].astype(np.float64)
            r = []
            for c in centers[i].astype(np.float64):
                cos = t @ c / (max(np.linalg.norm(t), 1e-8) * max(np.linalg.norm(c), 1e-8))
                r.append(np.linalg.norm(t - c) * (1 - cos))
            assign[i, j] = int(np.argmin(r))
            dist[i, j] = min(r)
        for p in range(centers.shape[1]):
            members = np.where(assign[i] == p)[0]
            if len(members) > 1:
                d = dist[i, members]
                mask[i, members[d > d.mean() + lam * d.std(ddof=1)]] = True
    return mask, dist, assign


def test_adaptive_mask_matches_loops() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 40, 16)).astype(np.float32)
    centers = rng.normal(size=(3, 5, 16)).astype(np.float32)
    mask, dist, assign = reference.adaptive_mask(torch.from_numpy(tokens), torch.from_numpy(centers), 0.5)
    want_mask, want_dist, want_assign = loop_adaptive_mask(tokens, centers, 0.5)
    np.testing.assert_allclose(dist.numpy(), want_dist, rtol=1e-5)  # float32 vs float64 sums
    np.testing.assert_array_equal(assign.numpy(), want_assign)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    assert 0 < mask.sum() < mask.numel()


def test_adaptive_mask_is_exact_for_nearly_parallel_tokens() -> None:
    """Trained tokens (norm ~800) sit within 1 - cos ~1e-4 of their centre (norm ~20): the float32 distances
    must still match float64 to 1e-5 and every mask decision must be float64's. 1 - t.c / (|t| |c|) in
    float32 misses both (relative errors ~1e-2 here; 0.6 % of a real set's decisions flipped)."""
    rng = np.random.default_rng(1)
    b, length, p, d = 2, 200, 6, 384
    directions = rng.normal(size=(b, p, d))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    near = directions[np.arange(b)[:, None], rng.integers(0, p, (b, length))]
    tokens = near + 7e-4 * rng.normal(size=(b, length, d))
    tokens *= (800 + 50 * rng.random((b, length, 1))) / np.linalg.norm(tokens, axis=-1, keepdims=True)
    tokens, centers = tokens.astype(np.float32), (20 * directions).astype(np.float32)
    mask, dist, assign = reference.adaptive_mask(torch.from_numpy(tokens), torch.from_numpy(centers), 0.5)
    want_mask, want_dist, want_assign = loop_adaptive_mask(tokens, centers, 0.5)
    nearest = centers[np.arange(b)[:, None], want_assign].astype(np.float64)
    one_minus_cos = want_dist / np.linalg.norm(tokens - nearest, axis=-1)
    assert np.median(one_minus_cos) < 1e-3  # the data is in the regime the test is about
    np.testing.assert_allclose(dist.numpy(), want_dist, rtol=1e-5)
    np.testing.assert_array_equal(assign.numpy(), want_assign)
    np.testing.assert_array_equal(mask.numpy(), want_mask)


def test_adaptive_mask_single_member_cluster_and_ties() -> None:
    centers = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # centres 0 and 1 identical: ties
    tokens = torch.tensor([[[2.0, 0.1], [3.0, 0.2], [1.5, -0.1], [0.0, 5.0]]])
    mask, _, assign = reference.adaptive_mask(tokens, centers, 0.5)
    assert assign[0].tolist() == [0, 0, 0, 2]  # tie -> lowest index; centre 1 never chosen
    assert not bool(mask[0, 3])  # the only member of cluster 2 is never masked


def test_token_on_its_boundary_is_not_masked() -> None:
    """Duplicate tokens alone in a cluster: distance == mean, std 0. `>` masks none, `>=` (the authors')
    would mask all. 4 and 8 copies: the float32 mean of equal values is exact for these counts."""
    for copies in (2, 4, 8):
        g = torch.Generator().manual_seed(copies)
        centers = torch.randn(1, 2, 16, generator=g)
        centers[0, 1] *= 50.0
        dup = (centers[:, :1] + 0.1 * torch.randn(1, 1, 16, generator=g)).expand(1, copies, 16)
        far = centers[:, 1:] + torch.randn(1, 5, 16, generator=g)
        mask, dist, assign = reference.adaptive_mask(torch.cat([dup, far], 1), centers, 0.5)
        assert (assign[0, :copies] == 0).all() and (assign[0, copies:] == 1).all()
        assert bool((dist[0, :copies] == dist[0, 0]).all())
        assert not mask[0, :copies].any(), copies


def test_small_clusters_use_the_unbiased_std() -> None:
    """Clusters of 2 and 3 tokens, lambda set between the critical values of std with n - 1 and with n:
    the top token is masked by the population std but not by the unbiased one (the authors' torch.std)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(1, 3, 8, generator=g) * 30.0
    centers[0, 0] = torch.randn(8, generator=g)
    tokens = torch.cat([centers[:, 0:1] + 0.5 * torch.randn(1, 2, 8, generator=g),  # cluster 0: 2 tokens
                        centers[:, 1:2] + 0.5 * torch.randn(1, 3, 8, generator=g),  # cluster 1: 3 tokens
                        centers[:, 2:3] + 0.5 * torch.randn(1, 6, 8, generator=g)], 1)
    _, dist, assign = reference.adaptive_mask(tokens, centers, 0.5)
    assert assign[0].tolist() == [0] * 2 + [1] * 3 + [2] * 6
    for cluster in (0, 1):
        d = dist[0][assign[0] == cluster].double().numpy()
        top = int(np.flatnonzero((assign[0] == cluster).numpy())[d.argmax()])
        crit = {ddof: (d.max() - d.mean()) / d.std(ddof=ddof) for ddof in (0, 1)}  # masked iff lam < crit
        assert crit[1] < crit[0]
        lam = float(crit[1] + crit[0]) / 2
        mask, _, _ = reference.adaptive_mask(tokens, centers, lam)
        assert not mask[0, top], (cluster, crit, lam)  # n - 1: not masked (n would mask it)
        mask, _, _ = reference.adaptive_mask(tokens, centers, float(crit[1]) * 0.99)
        assert mask[0, top]
        np.testing.assert_array_equal(mask.numpy(), loop_adaptive_mask(tokens.numpy(), centers.numpy(),
                                                                       float(crit[1]) * 0.99)[0])


@pytest.mark.parametrize("out_hw, sigma", [((48, 48), 2.0), ((40, 56), 4.0), ((6, 9), 2.0)])
def test_score_map_matches_scipy(out_hw: tuple[int, int], sigma: float) -> None:
    """Upsample with align_corners=True, then scipy gaussian_filter with its defaults, as the authors call
    it (mode "reflect": edge pixel repeated; truncate 4). (6, 9) at sigma 2: radius 8 > 6, reflected twice."""
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(2, 8, 12, 12)).astype(np.float32)
    recon = feat + rng.normal(scale=0.5, size=feat.shape).astype(np.float32)
    amap, score = reference.score_map(torch.from_numpy(feat), torch.from_numpy(recon), out_hw, sigma=sigma)
    mse = ((feat - recon) ** 2).mean(1)
    cos = (feat * recon).sum(1) / (np.linalg.norm(feat, axis=1) * np.linalg.norm(recon, axis=1))

    def up_smooth(m: np.ndarray) -> np.ndarray:
        up = F.interpolate(torch.from_numpy(m)[:, None], size=out_hw, mode="bilinear", align_corners=True)
        return np.stack([gaussian_filter(u, sigma, mode="reflect", truncate=4.0) for u in up[:, 0].numpy()])

    want = up_smooth(mse) * up_smooth((1 - cos).astype(np.float32))
    # float32 sums vs scipy's float64 taps: 1e-5 relative
    np.testing.assert_allclose(amap.numpy(), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(score.numpy(), want.reshape(2, -1).std(1), rtol=1e-4)
    _, score_max = reference.score_map(torch.from_numpy(feat), torch.from_numpy(recon), out_hw, sigma, "max")
    np.testing.assert_allclose(score_max.numpy(), want.reshape(2, -1).max(1), rtol=1e-4)


def test_smooth_border_repeats_the_edge_pixel() -> None:
    """A step at the border: scipy's "reflect" sees the edge value twice, "mirror" once; the two differ."""
    m = np.zeros((1, 20, 20), np.float32)
    m[0, :, 0] = 1.0
    got = reference.smooth(torch.from_numpy(m), 1.0).numpy()[0]
    np.testing.assert_allclose(got, gaussian_filter(m[0], 1.0), rtol=1e-5, atol=1e-7)
    assert abs(got[10, 0] - gaussian_filter(m[0], 1.0, mode="mirror")[10, 0]) > 0.1


def test_smoothing_matrix_equals_upsample_then_blur() -> None:
    m = torch.randn(3, 10, 10)
    a = reference.smoothing_matrix(10, 40, 3.0)
    direct = reference.smooth(F.interpolate(m[:, None], size=(40, 40), mode="bilinear",
                                            align_corners=True)[:, 0], 3.0)
    torch.testing.assert_close(a @ m @ a.T, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", [4.0, 0.0])
def test_exported_upsample_smooth_is_two_matmuls(tmp_path, sigma: float) -> None:  # type: ignore[no-untyped-def]
    """In an ONNX export upsample_smooth is A_h @ maps @ A_w.T with constant matrices (no Resize, no 1-D
    Conv), and onnxruntime's result equals the eager interpolate + blur to float32 rounding."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Smooth(torch.nn.Module):
        def forward(self, maps: torch.Tensor) -> torch.Tensor:
            return reference.upsample_smooth(maps, (96, 70), sigma)

    maps = torch.rand(3, 24, 17)
    path = tmp_path / "smooth.onnx"
    torch.onnx.export(Smooth(), (maps,), str(path), input_names=["maps"], output_names=["out"], opset_version=17,
                      dynamo=False, dynamic_axes={"maps": {0: "batch"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMul") == 2 and "Resize" not in ops and "Conv" not in ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"maps": maps.numpy()})[0]
    want = reference.upsample_smooth(maps, (96, 70), sigma).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * float(np.abs(want).max()))


def test_score_map_rejects_unknown_image_score() -> None:
    with pytest.raises(ValueError, match="image_score"):
        reference.score_map(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), (8, 8), 1.0, "mean")
