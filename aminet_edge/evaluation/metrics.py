"""Anomaly-detection metrics in NumPy (scikit-learn is the independent reference in the tests).

All curve metrics work on the exact sweep over distinct score values (ties grouped, as scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NORMAL_SIGMAS = 3.0  # normal-only threshold = mean + 3 std of normal scores


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if y.all() or not y.any():
        raise ValueError("metric needs both normal and anomalous samples")
    return y, s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives, threshold) at each distinct score, descending."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each group of equal scores
    tps = np.cumsum(y)[last]
    return tps, (last + 1) - tps, s[last]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal over the exact sweep; ties count half)."""
    y, s = _check(labels, scores)
    tps, fps, _ = _curve(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as scikit-learn."""
    y, s = _check(labels, scores)
    tps, fps, _ = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over thresholds and that threshold (score >= threshold is anomalous)."""
    y, s = _check(labels, scores)
    tps, fps, thr = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by it (MVTec AD's AUPRO).

    masks: (N, H, W) bool ground truth; maps: (N, H, W) scores. Regions are 8-connected components
    of each mask. Exact sweep: PRO(t) = mean over regions of the fraction of the region scored >= t,
    FPR(t) over all normal pixels; the curve is cut at fpr_limit by linear interpolation.
    """
    from scipy import ndimage

    masks = np.asarray(masks, bool)
    maps = np.asarray(maps, np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W), got {masks.shape} and {maps.shape}")
    weights = np.zeros(masks.shape, np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count:
            sizes = np.bincount(labels.ravel())
            weights[i] = np.where(labels > 0, 1.0 / sizes[labels], 0.0)
            regions += count
    negatives = ~masks
    if regions == 0 or not negatives.any():
        raise ValueError("AUPRO needs at least one defect region and some normal pixels")
    s = maps.ravel()
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    pro = np.r_[0.0, np.cumsum(weights.ravel()[order])[last] / regions]
    fpr = np.r_[0.0, np.cumsum(negatives.ravel()[order])[last] / negatives.sum()]
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    if cut < fpr.size:
        pro_at = np.interp(fpr_limit, fpr[cut - 1:cut + 1], pro[cut - 1:cut + 1])
        fpr, pro = np.r_[fpr[:cut], fpr_limit], np.r_[pro[:cut], pro_at]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def threshold_from_normal(scores: np.ndarray, sigmas: float = NORMAL_SIGMAS) -> float:
    """Normal-only threshold: mean + sigmas x std (population) of scores of normal images."""
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("normal-only calibration needs at least one normal image")
    return float(s.mean() + sigmas * s.std())


def _image_pixel(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None,
                 maps: np.ndarray | None) -> dict[str, float]:
    out = {"image_auroc": auroc(labels, scores), "image_ap": average_precision(labels, scores),
           "image_f1_max": f1_max(labels, scores)[0]}
    if masks is not None and maps is not None and masks.any() and not masks.all():
        out.update(pixel_auroc=auroc(masks, maps), pixel_ap=average_precision(masks, maps),
                   aupro=aupro(masks, maps))
    return out


def evaluate(image_labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray | None,
             maps: np.ndarray | None, defect_types: Sequence[str],
             pixel_rows: np.ndarray | None = None) -> dict:
    """Image metrics on all images; pixel metrics (pixel AUROC/AP, AUPRO) on the images with masks.

    masks/maps: (M, H, W) for the images selected by the boolean `pixel_rows` (N,) (all when None).
    Adds "per_type": each defect type against the normal images.
    """
    labels = np.asarray(image_labels).astype(int)
    scores = np.asarray(image_scores, np.float64)
    types = np.asarray(list(defect_types))
    rows = np.ones(len(labels), bool) if pixel_rows is None else np.asarray(pixel_rows, bool)
    result: dict = _image_pixel(labels, scores, masks, maps)
    if "pixel_auroc" not in result:
        result["pixel_note"] = "no pixel metrics: no ground-truth masks with defects"
    per_type = {}
    pixel_types = types[rows]
    for kind in sorted(set(types[labels == 1])):
        sel = (labels == 0) | (types == kind)
        psel = (pixel_types == "good") | (pixel_types == kind)
        per_type[kind] = _image_pixel(labels[sel], scores[sel],
                                      None if masks is None else masks[psel],
                                      None if maps is None else maps[psel])
    result["per_type"] = per_type
    return result
