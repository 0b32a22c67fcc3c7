"""The kNN baseline: nearest distances against scikit-learn's brute-force search, bank subsampling, maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from aminet_edge.data.datasets import load_dataset
from aminet_edge.data.synthetic import make_synthetic_dataset
from aminet_edge.evaluation.knn_baseline import _flat, build_bank, knn_patches, knn_scores, nearest_distance
from aminet_edge.model.features import build_feature_extractor
from aminet_edge.data.batches import load_batches


@pytest.mark.parametrize("chunk", [7, 1024])
def test_nearest_distance_matches_sklearn(chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 24, generator=gen) * 3 + 5  # offset: large norms, where q.b cancellation bites
    queries = torch.cat([torch.randn(50, 24, generator=gen) * 3 + 5, bank[:5]])  # 5 exact duplicates
    ref, _ = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(bank.double().numpy()).kneighbors(
        queries.double().numpy())
    got = nearest_distance(queries, bank, chunk=chunk).numpy()
    # tolerance: the picked row's distance is recomputed directly in float32 (~1e-6 relative)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-5, atol=1e-5)
    assert (got[-5:] == 0).all()


def test_nearest_distance_rejects_mismatch() -> None:
    with pytest.raises(ValueError, match="agree in C"):
        nearest_distance(torch.zeros(3, 4), torch.zeros(5, 3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = make_synthetic_dataset(tmp_path_factory.mktemp("knn"), n_train=4, n_test_good=1, n_test_defect=1,
                                  size=64)
    ext = build_feature_extractor("efficientnet_lite0", image_size=64, pretrained=False)
    return [s.path for s in load_dataset(data).train], ext


def test_patches_are_pooled_middle_stages(setup) -> None:  # type: ignore[no-untyped-def]
    paths, ext = setup
    x = next(load_batches(paths[:2], 64, ext.mean, ext.std, 2))
    _, mid, deep = ext.stages(x)
    p = knn_patches(ext, x)
    assert p.shape == (2, mid.shape[1] + deep.shape[1], 8, 8)
    # independent: pool each stage by an explicit 3x3 mean with zero padding, resize the deep one
    box = lambda t: torch.nn.functional.conv2d(  # noqa: E731
        t, torch.full((t.shape[1], 1, 3, 3), 1 / 9), padding=1, groups=t.shape[1])
    deep_up = torch.nn.functional.interpolate(box(deep), size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(p, torch.cat([box(mid), deep_up], 1), rtol=1e-5, atol=1e-5)


def test_bank_subsample_is_a_subset_and_training_images_score_zero(setup) -> None:  # type: ignore[no-untyped-def]
    paths, ext = setup
    full, total = build_bank(ext, paths, 64, ext.mean, ext.std, bank_cap=10_000)
    assert total == len(paths) * 64 and full.shape[0] == total
    sub, total2 = build_bank(ext, paths, 64, ext.mean, ext.std, bank_cap=100, seed=3, batch_size=3)
    assert total2 == total and sub.shape == (100, full.shape[1])
    keep = np.sort(np.random.default_rng(3).choice(total, 100, replace=False))
    torch.testing.assert_close(sub, full[torch.from_numpy(keep)])
    # every patch of a training image is in the full bank: distance, map and image score are all 0
    scores, maps = knn_scores(ext, full, paths[:2], 64, ext.mean, ext.std, sigma=2.0)
    assert maps.shape == (2, 64, 64) and np.abs(maps).max() == 0 and (scores == 0).all()


def test_map_is_upsampled_smoothed_distance(setup) -> None:  # type: ignore[no-untyped-def]
    paths, ext = setup
    bank, _ = build_bank(ext, paths[:2], 64, ext.mean, ext.std)
    scores, maps = knn_scores(ext, bank, paths[2:3], 64, ext.mean, ext.std, sigma=2.0)
    x = next(load_batches(paths[2:3], 64, ext.mean, ext.std, 1))
    q = _flat(knn_patches(ext, x)).double().numpy()
    d, _ = NearestNeighbors(n_neighbors=1).fit(bank.double().numpy()).kneighbors(q)
    # independent map: scipy zoom-free route = bilinear (align_corners) by explicit weights, scipy blur (default "reflect")
    from scipy.ndimage import gaussian_filter

    grid = d[:, 0].reshape(8, 8)
    pos = np.linspace(0, 7, 64)
    lo = np.minimum(np.floor(pos).astype(int), 6)
    w = pos - lo
    rows = grid[lo] * (1 - w)[:, None] + grid[lo + 1] * w[:, None]
    up = rows[:, lo] * (1 - w)[None, :] + rows[:, lo + 1] * w[None, :]
    ref = gaussian_filter(up, sigma=2.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(maps[0], ref, rtol=1e-4, atol=1e-4 * ref.max())
    assert scores[0] == pytest.approx(maps[0].max())
