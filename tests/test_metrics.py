"""Metrics against scikit-learn, and AUPRO against a direct per-threshold computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from aminet_edge.evaluation.metrics import (
    aupro, auroc, average_precision, evaluate, f1_max, threshold_from_normal)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_f1_max_is_the_best_sklearn_f1() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    best, thr = f1_max(y, s)
    want = max(f1_score(y, s >= t) for t in np.unique(s))
    assert best == pytest.approx(want) and f1_score(y, s >= thr) == pytest.approx(want)


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        auroc(np.zeros(5), np.arange(5))


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


def test_evaluate_per_type_and_normal_threshold() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.15, 0.9, 0.3, 0.8])
    types = ["good"] * 3 + ["a", "b", "a"]
    masks = np.zeros((6, 8, 8), bool)
    masks[3:, 2:5, 2:5] = True
    maps = rng.random((6, 8, 8)) + masks
    out = evaluate(labels, scores, masks, maps, types)
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert set(out["per_type"]) == {"a", "b"} and out["per_type"]["b"]["image_auroc"] == 1.0
    normal = np.array([1.0, 2.0, 3.0])
    assert threshold_from_normal(normal) == pytest.approx(2.0 + 3 * np.std(normal))
