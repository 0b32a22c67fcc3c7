"""Metrics against scikit-learn, and AUPRO against a direct per-threshold computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from aminet_edge.evaluation.metrics import (
    aupro, auroc, average_precision, evaluate, f1_max, threshold_from_normal)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_auroc_and_ap_match_sklearn_with_ties(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1).astype(dtype)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    y[:] = 1
    s[:] = 0.5
    y[0] = 0  # all scores tied: chance level
    assert auroc(y, s) == 0.5 and average_precision(y, s) == pytest.approx(average_precision_score(y, s))


@pytest.mark.parametrize("seed", [3, 4])
def test_f1_max_is_the_best_sklearn_f1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)
    best, thr = f1_max(y, s)
    want = max(f1_score(y, s >= t) for t in np.unique(s))
    assert best == pytest.approx(want)
    # the threshold sits between scores: the runtime's `>` and `>=` both reproduce the F1
    assert f1_score(y, s > thr) == pytest.approx(want) and f1_score(y, s >= thr) == pytest.approx(want)
    assert f1_max([0, 1, 1], [0.5, 0.5, 0.5]) == (pytest.approx(0.8), np.nextafter(0.5, 0))  # all anomalous


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_threshold_reproduces_its_f1_in_float32(seed: int) -> None:
    """Tie-heavy float32 maps: pixel scores on 4 adjacent float32 values. The float64 midpoint of two
    adjacent float32 values rounds onto one of them in float32; the stored threshold must be a float32
    value that the runtime's `map > float32(t)` (and an image score's float64 `>`) splits the same way."""
    rng = np.random.default_rng(seed)
    grid = [np.float32(0.3)]
    for _ in range(3):
        grid.append(np.nextafter(grid[-1], np.float32(1.0)))
    steps = rng.integers(0, 4, 5000)
    s = np.array(grid, np.float32)[steps]
    y = (steps + rng.integers(-1, 2, steps.size)) >= 2
    best, thr = f1_max(y, s)
    assert best == max(f1_score(y, s >= t) for t in grid)
    assert f1_score(y, s > np.float32(thr)) == best
    assert f1_score(y, s.astype(np.float64) > thr) == best
    assert float(np.float32(thr)) == thr  # exactly representable: JSON round trip and float32 cast keep it


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        auroc(np.zeros(5), np.arange(5))
    with pytest.raises(ValueError, match="NaN"):
        average_precision([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="differ in size"):
        f1_max([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)), fpr_limit=0)


def direct_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Threshold by threshold over every distinct score, then trapezoid integration to the limit."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(len(regions), lab == k) for k in range(1, n + 1)]
    fprs, pros = [0.0], [0.0]
    index = [i for i, m in enumerate(masks) for _ in range(ndimage.label(m, structure=np.ones((3, 3)))[1])]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & ~masks).sum() / (~masks).sum())
        pros.append(np.mean([pred[index[j]][r].mean() for j, (_, r) in enumerate(regions)]))
    fpr, pro = np.array(fprs), np.array(pros)
    keep = fpr <= limit
    cut = keep.sum()
    x, y = list(fpr[keep]), list(pro[keep])
    if cut < len(fpr):
        x.append(limit)
        y.append(np.interp(limit, fpr[cut - 1:cut + 1], pro[cut - 1:cut + 1]))
    return float(np.trapezoid(y, x) / limit)


def test_aupro_matches_direct_sweep() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:10, 8:11] = True
    masks[2, 5:9, 1:3] = True
    maps = np.round(rng.random(masks.shape) + 0.8 * masks, 2)
    assert aupro(masks, maps) == pytest.approx(direct_aupro(masks, maps, 0.3), rel=1e-9)
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == pytest.approx(1.0)


def test_evaluate_pools_pixels_and_breaks_down_by_type() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.15, 0.9, 0.3, 0.8, 0.5])
    types = ["good"] * 3 + ["a", "b", "a", "b"]
    masks = np.zeros((7, 8, 8), bool)
    masks[3:6, 2:5, 2:5] = True
    masks[5, 7, 7] = True  # a second region in one image
    maps = np.round(rng.random((7, 8, 8)) + masks, 1).astype(np.float32)  # ties across classes
    rows = np.array([True] * 6 + [False])  # the last "b" image has no mask file
    out = evaluate(labels, scores, masks[rows], maps[rows], types, pixel_rows=rows)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    assert out["image_f1_max"] == pytest.approx(f1_max(labels, scores)[0])
    pooled_m, pooled_s = masks[rows].ravel(), maps[rows].ravel()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(pooled_m, pooled_s), abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(pooled_m, pooled_s), abs=1e-12)
    assert out["aupro"] == pytest.approx(aupro(masks[rows], maps[rows]), abs=1e-12)
    assert set(out["per_type"]) == {"a", "b"}
    b = [0, 1, 2, 4, 6]
    assert out["per_type"]["b"]["image_auroc"] == pytest.approx(roc_auc_score(labels[b], scores[b]))
    for kind, images in (("a", [0, 1, 2, 3, 5]), ("b", [0, 1, 2, 4])):  # pixels: only images with masks
        got = out["per_type"][kind]
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks[images].ravel(), maps[images].ravel()))
        assert got["aupro"] == pytest.approx(direct_aupro(masks[images], maps[images], 0.3), rel=1e-9)
    blank = evaluate(labels, scores, np.zeros((7, 8, 8), bool), maps, types)
    assert "pixel_auroc" not in blank and "no pixel metrics" in blank["pixel_note"]
    assert "pixel_auroc" not in evaluate(labels, scores, None, None, types)
    with pytest.raises(ValueError, match="0 defective"):
        evaluate(np.zeros(3), scores[:3], None, None, types[:3])


def test_normal_threshold_is_mean_plus_three_std() -> None:
    normal = np.array([1.0, 2.0, 3.0])
    assert threshold_from_normal(normal) == pytest.approx(2.0 + 3 * np.std(normal))
    assert threshold_from_normal([4.0]) == 4.0
    with pytest.raises(ValueError, match="at least one"):
        threshold_from_normal([])
