"""Anomaly-detection metrics in NumPy (scikit-learn is the independent reference in the tests).

Every curve metric is an exact sweep over the distinct score values: scores are sorted once
(O(n log n)), equal scores form one threshold (ties handled as scikit-learn does), and counts are
cumulative sums read at the end of each run of equal scores. Label 1 / True = anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AUPRO_FPR_LIMIT = 0.3  # MVTec AD's integration limit for the PRO curve
NORMAL_SIGMAS = 3.0  # normal-only threshold = mean + 3 std of normal scores (see threshold_from_normal)


def _float_scores(scores: np.ndarray) -> np.ndarray:
    """Flat float scores; float32 stays float32 (sorting it is twice as fast as float64)."""
    s = np.asarray(scores).reshape(-1)
    s = s.astype(np.float64) if s.dtype.kind != "f" or s.dtype.itemsize < 4 else s
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = _float_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if y.all() or not y.any():
        raise ValueError(f"metric needs both normal and anomalous samples; got {int(y.sum())} anomalous "
                         f"of {y.size}")
    return y, s


def _descending(s: np.ndarray) -> np.ndarray:
    """Indices that sort `s` from high to low (order within ties is irrelevant: runs are grouped)."""
    return np.argsort(s)[::-1]


def _run_ends(s_sorted: np.ndarray) -> np.ndarray:
    """Last index of each run of equal values in sorted scores: one entry per distinct threshold."""
    return np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1)


def _counts(y_sorted: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) when every score down to each run end is called anomalous."""
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    return tps, (ends + 1) - tps


def _from_zero(x: np.ndarray) -> np.ndarray:
    """A cumulative curve with its (0) starting point prepended, as float64."""
    return np.concatenate([[0.0], x])


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (np.trapezoid needs numpy 2; the package supports numpy >= 1.24)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    return _trapezoid(_from_zero(tps / tps[-1]), _from_zero(fps / fps[-1]))


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    return float(np.sum(np.diff(tps, prepend=0) / tps[-1] * (tps / (tps + fps))))


def _area_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under pro(fpr) from 0 to `limit` (linear interpolation at the cut), / limit."""
    cut = int(np.searchsorted(fpr, limit, side="right"))  # fpr[cut - 1] <= limit < fpr[cut]
    if cut < fpr.size:
        at = np.interp(limit, fpr[cut - 1:cut + 1], pro[cut - 1:cut + 1])
        fpr, pro = np.r_[fpr[:cut], limit], np.r_[pro[:cut], at]
    return _trapezoid(pro, fpr) / limit


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids over the exact sweep; a tie between classes counts half).

    labels: (n,) bool or 0/1 (any shape, flattened); scores: same size, higher = more anomalous.
    """
    y, s = _check(labels, scores)
    order = _descending(s)
    return _auroc(*_counts(y[order], _run_ends(s[order])))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as scikit-learn."""
    y, s = _check(labels, scores)
    order = _descending(s)
    return _average_precision(*_counts(y[order], _run_ends(s[order])))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds, and that threshold: anomalous where score > threshold.

    The threshold t lies between the lowest score called anomalous (low) and the next lower distinct
    score (below): halfway, rounded to the scores' own dtype and kept in [below, low) (just below the
    minimum when all are called anomalous). So t is exactly representable in that dtype, and the
    runtime's `score > float32(t)` on float32 maps makes the same decisions and reproduces this F1, even
    when low and below are adjacent float32 values.
    """
    y, s = _check(labels, scores)
    order = _descending(s)
    s_sorted = s[order]
    ends = _run_ends(s_sorted)
    tps, fps = _counts(y[order], ends)
    f1 = 2 * tps / (tps + fps + tps[-1])  # 2TP / (2TP + FP + FN), with FN = positives - TP
    best = int(np.argmax(f1))
    low = s_sorted[ends[best]]  # s.dtype: float32 or float64 (see _float_scores)
    just_below = np.nextafter(low, s.dtype.type(-np.inf))
    if best + 1 == ends.size:  # all are called anomalous
        return float(f1[best]), float(just_below)
    t = s.dtype.type((float(low) + float(s_sorted[ends[best] + 1])) / 2)
    return float(f1[best]), float(t if t < low else just_below)  # rounded onto low: adjacent values


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel 1 / (size of its 8-connected defect region), 0 outside defects: (N, H, W) float64;
    and the number of regions in each image, (N,) int64."""
    from scipy import ndimage

    weights = np.zeros(masks.shape, np.float64)
    regions = np.zeros(len(masks), np.int64)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count:
            sizes = np.bincount(labels.ravel())
            weights[i] = np.where(labels > 0, 1.0 / sizes[labels], 0.0)
            regions[i] = count
    return weights, regions


def _check_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks, bool)
    if masks.shape != np.shape(maps) or masks.ndim != 3:
        raise ValueError(f"masks and maps must both be (N, H, W), got {masks.shape} and {np.shape(maps)}")
    return masks, _float_scores(maps)


def _pixel_metrics(s_sorted: np.ndarray, y_sorted: np.ndarray, w_sorted: np.ndarray, regions: int,
                   fpr_limit: float) -> dict[str, float]:
    """Pixel AUROC, pixel AP and AUPRO from pixels already sorted by descending score."""
    ends = _run_ends(s_sorted)
    tps, fps = _counts(y_sorted, ends)
    fpr = _from_zero(fps / fps[-1])
    pro = _from_zero(np.cumsum(w_sorted)[ends] / regions)
    return {"pixel_auroc": _auroc(tps, fps), "pixel_ap": _average_precision(tps, fps),
            "aupro": _area_to(fpr, pro, fpr_limit)}


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by it (MVTec AD's AUPRO).

    masks: (N, H, W) bool ground truth; maps: (N, H, W) float scores. Regions are the 8-connected
    components of each mask. Exact sweep over every distinct score t (no fixed threshold grid):
    PRO(t) = mean over all regions of the fraction of the region with score >= t; FPR(t) = fraction
    of all defect-free pixels (of every image) with score >= t. The curve is cut at fpr_limit by
    linear interpolation, as in the MVTec AD evaluation code.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, s = _check_pixels(masks, maps)
    weights, regions = _region_weights(masks)
    if regions.sum() == 0 or masks.all():
        raise ValueError("AUPRO needs at least one defect region and some defect-free pixels")
    order = _descending(s)
    return _pixel_metrics(s[order], masks.reshape(-1)[order], weights.reshape(-1)[order],
                          int(regions.sum()), fpr_limit)["aupro"]


def threshold_from_normal(scores: np.ndarray, sigmas: float = NORMAL_SIGMAS) -> float:
    """Normal-only threshold: mean + sigmas x std (population) of scores of held-out normal images.

    Why this rule: calibration sets are small (tens of images), so a 0.99 quantile is just the
    maximum, which one odd image decides; mean + 3 std uses every score and, for roughly Gaussian
    scores, flags about 0.1 % of normal images. With one score it is that score (std 0).
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("normal-only calibration needs at least one normal score")
    if not np.isfinite(s).all():
        raise ValueError("normal scores contain NaN or infinite values")
    return float(s.mean() + sigmas * s.std())


def _image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"image_auroc": auroc(labels, scores), "image_ap": average_precision(labels, scores),
            "image_f1_max": f1_max(labels, scores)[0]}


def evaluate(image_labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray | None,
             maps: np.ndarray | None, defect_types: Sequence[str], pixel_rows: np.ndarray | None = None,
             fpr_limit: float = AUPRO_FPR_LIMIT) -> dict:
    """Image metrics on all N images, pixel metrics on the images that have pixel labels.

    image_labels: (N,) 0/1; image_scores: (N,); defect_types: N names ("good" for normal images).
    masks: (M, H, W) bool and maps: (M, H, W) float for the M images selected by pixel_rows, an (N,)
    bool (all N when None). Normal images count as all-defect-free; leave out defective images that
    have no mask file. Pixel metrics pool every pixel of those images.

    Returns image_auroc, image_ap, image_f1_max, pixel_auroc, pixel_ap, aupro (the pixel ones absent,
    with a "pixel_note", when no defect pixels exist) and "per_type": the same for each defect type
    against all normal images.
    """
    labels = np.asarray(image_labels).reshape(-1).astype(np.int64)
    scores = _float_scores(image_scores)
    types = np.asarray(list(defect_types), dtype=object)
    rows = np.ones(labels.size, bool) if pixel_rows is None else np.asarray(pixel_rows, bool).reshape(-1)
    if not labels.size == scores.size == types.size == rows.size:
        raise ValueError(f"image_labels, image_scores, defect_types and pixel_rows differ in length: "
                         f"{labels.size}, {scores.size}, {types.size}, {rows.size}")
    if labels.all() or not labels.any():
        raise ValueError(f"evaluation needs normal and defective test images; got {int((labels == 0).sum())} "
                         f"normal and {int(labels.sum())} defective")
    kinds = sorted(set(types[labels == 1]))
    result: dict = _image_metrics(labels, scores)
    per_type = {}
    for kind in kinds:
        sel = (labels == 0) | (types == kind)
        per_type[kind] = _image_metrics(labels[sel], scores[sel])

    has_pixels = masks is not None and maps is not None and np.asarray(masks).any()
    if has_pixels:
        masks, s = _check_pixels(masks, maps)
        if len(masks) != rows.sum():
            raise ValueError(f"masks hold {len(masks)} images but pixel_rows selects {int(rows.sum())}")
        has_pixels = not masks.all()
    if not has_pixels:
        result["pixel_note"] = "no pixel metrics: no ground-truth masks with defect and defect-free pixels"
    else:
        # one sort for everything: a subset of images, filtered out of the sorted pixels, stays sorted
        weights, regions = _region_weights(masks)
        order = _descending(s)
        s, y, w = s[order], masks.reshape(-1)[order], weights.reshape(-1)[order]
        image_of = (order // masks[0].size).astype(np.int32)
        result.update(_pixel_metrics(s, y, w, int(regions.sum()), fpr_limit))
        pixel_labels, pixel_types = labels[rows], types[rows]
        for kind in kinds:
            keep = (pixel_labels == 0) | (pixel_types == kind)
            if regions[keep].sum() == 0 or masks[keep].all():
                continue  # no masks for this type
            sel = keep[image_of]
            per_type[kind].update(_pixel_metrics(s[sel], y[sel], w[sel], int(regions[keep].sum()), fpr_limit))
    result["per_type"] = per_type
    return result
