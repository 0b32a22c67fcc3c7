"""Markdown report of `evaluate_bundle`'s metrics: AMI-Net next to the baseline, and the mask's coverage."""

from __future__ import annotations

from pathlib import Path

from aminet_edge.files import atomic_write_text

METRICS = ("image_auroc", "pixel_auroc", "image_ap", "pixel_ap", "aupro", "image_f1_max")


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def metrics_table(metrics: dict) -> str:
    """| metric | AMI-Net | kNN baseline |: overall metrics, then image / pixel AUROC per defect type.
    The baseline column appears when metrics hold "baseline_knn"."""
    knn = metrics.get("baseline_knn")
    head = "| metric | AMI-Net |" + (" kNN baseline |" if knn else "")
    rows = [head, "|---|---|" + ("---|" if knn else "")]

    def row(name: str, ours: object, theirs: object) -> None:
        rows.append(f"| {name} | {_fmt(ours)} |" + (f" {_fmt(theirs)} |" if knn else ""))

    for key in METRICS:
        row(key, metrics.get(key), knn.get(key) if knn else None)
    for kind, m in metrics.get("per_type", {}).items():
        theirs = knn["per_type"].get(kind, {}) if knn else {}
        for key in ("image_auroc", "pixel_auroc"):
            row(f"{kind} {key}", m.get(key), theirs.get(key))
    return "\n".join(rows)


def coverage_table(coverage: dict) -> str:
    """| defect type | mask recall | defect tokens | normal tokens masked (defect images) |, plus a row for
    all defective images and one for the normal test images."""
    rows = ["| defect type | mask recall | defect tokens | normal tokens masked (same images) |", "|---|---|---|---|"]
    for kind, c in [*coverage["per_type"].items(), ("all defective", coverage)]:
        rows.append(f"| {kind} | {_fmt(c['mask_recall'])} | {c['defect_tokens']} | "
                    f"{_fmt(c['normal_region_masked_share'])} |")
    rows.append(f"| normal test images | | | {_fmt(coverage['normal_masked_share'])} |")
    return "\n".join(rows)


def write_report(metrics: dict, path: str | Path, title: str) -> Path:
    """Write the metrics table, the baseline's bank size and the mask-coverage table to `path`."""
    parts = [f"# {title}", "", metrics_table(metrics), ""]
    if "mask" in metrics:
        parts += [f"Test-time mask: {metrics['mask']}; score map: {metrics['score_map']}.", ""]
    tile = metrics.get("tile")
    if tile:
        parts += [f"Tiled: {tile['size']} px tiles, overlap >= {tile['overlap']} px (kNN baseline untiled)."
                  + (f" {metrics['tile_note']}." if "tile_note" in metrics else ""), ""]
    knn = metrics.get("baseline_knn")
    if knn:
        sub = "" if knn["bank_patches"] == knn["train_patches"] else ", a uniform random subsample"
        parts += [f"kNN baseline: memory bank of {knn['bank_patches']:,} of {knn['train_patches']:,} training "
                  f"patches (cap {knn['bank_cap']:,}{sub}); image score = map maximum.", ""]
    coverage = metrics.get("mask_coverage")
    if coverage:
        parts += [f"Mask coverage (defect token: >= {coverage['defect_token_fraction']:.0%} defect "
                  f"pixels; normal token: none):", "", coverage_table(coverage), ""]
    return atomic_write_text(path, "\n".join(parts))
