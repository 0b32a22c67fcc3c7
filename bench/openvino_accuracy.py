"""OpenVINO's CPU paths against the fp32 graph on real data: image and pixel AUROC, tokens of the mask changed.

Usage: python bench/openvino_accuracy.py BUNDLE DATA [BUNDLE DATA ...] [--batch 8]
e.g.   python bench/openvino_accuracy.py /work/runs/bottle_cpu ../shared/data/mvtec_bottle

Each trained BUNDLE is copied (config.json and its weights) into a temporary folder and exported there
with `--precision int8 --calibration-data DATA` (fp32 graphs, onnxruntime's int8 copies, and OpenVINO's
int8 graph calibrated on DATA's normal training images, never its test images); the run itself is
untouched. Every variant predicts the DATA set's test split through `Detector.predict_batch` (maps at each
image's own resolution, the path users run): onnxruntime fp32 (the reference), onnxruntime int8,
openvino fp32 (the default), openvino int8, and where the CPU has native bf16 openvino / openvino-split
bf16 (opt-in). The issue's bar: AUROC within 0.002 of fp32, <= 0.5 %
tokens changed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402

VARIANTS = (  # (label, backend, options); the first is the reference
    ("onnxruntime fp32", "onnxruntime", {"precision": "fp32"}),
    ("onnxruntime int8", "onnxruntime", {"precision": "int8"}),
    ("openvino fp32", "openvino", {"precision": "fp32"}),
    ("openvino int8", "openvino", {"precision": "int8"}),
)
BF16_VARIANTS = (("openvino bf16", "openvino", {"precision": "bf16"}),
                 ("openvino-split bf16", "openvino-split", {"precision": "bf16"}))


def exported_copy(bundle: Path, work: Path, data: Path) -> Path:
    """config.json and the weights of `bundle` in `work`, exported to fp32 + int8 ONNX (OpenVINO's
    int8 graph calibrated on `data`'s training images)."""
    from aminet_edge.export.onnx_export import export_onnx

    copy = work / bundle.name
    copy.mkdir()
    from aminet_edge.bundle import read_config, weights_file

    for name in ("config.json", weights_file(bundle, read_config(bundle)).name):
        shutil.copy(bundle / name, copy / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        export_onnx(copy, "int8", calibration_data=[data])
    return copy


def rows_for(bundle: Path, data: Path, work: Path, batch: int) -> list[str]:
    from aminet_edge.data.datasets import load_dataset
    from aminet_edge.data.images import read_mask
    from aminet_edge.evaluation.metrics import auroc

    if not (bundle / "config.json").is_file() or not (data / "test").is_dir():
        return [f"| {bundle.name} | unmeasured: no trained bundle at {bundle} or no test split in {data} |"
                + " - |" * 5]
    copy = exported_copy(bundle, work, data)
    test = load_dataset(data).test
    labels = np.array([s.label for s in test])
    from aminet_edge.runtime.backends.openvino_backend import cpu_capabilities

    out = {}
    for label, backend, options in VARIANTS + (BF16_VARIANTS if "BF16" in cpu_capabilities() else ()):
        det = Detector.load(copy, backend=backend, threshold=1.0, pixel_threshold=1.0, **options)
        results = det.predict_batch([s.path for s in test], batch_size=batch)
        for r in results:
            r.raise_for_error()
        out[label] = (f"{det.backend} {det.precision}", results)
        det.close()
    truth = [read_mask(s.mask_path) if s.mask_path else np.zeros(r.anomaly_map.shape, bool)
             for s, r in zip(test, out[VARIANTS[0][0]][1])]
    flat_truth = np.concatenate([t.ravel() for t in truth])
    ref = out[VARIANTS[0][0]][1]
    ref_image = auroc(labels, np.array([r.score for r in ref]))
    ref_pixel = auroc(flat_truth, np.concatenate([r.anomaly_map.ravel() for r in ref]))
    rows = []
    for label in out:
        what, results = out[label]
        image = auroc(labels, np.array([r.score for r in results]))
        pixel = auroc(flat_truth, np.concatenate([r.anomaly_map.ravel() for r in results]))
        changed = np.mean(np.concatenate([(r.token_mask != q.token_mask).ravel() for r, q in zip(results, ref)]))
        score = max(abs(r.score - q.score) / abs(q.score) for r, q in zip(results, ref))
        rows.append(f"| {bundle.name} on {data.name} ({len(test)} test images) | {label} ({what}) | {image:.4f} "
                    f"({image - ref_image:+.4f}) | {pixel:.4f} ({pixel - ref_pixel:+.4f}) | {changed:.3%} | "
                    f"{score:.1e} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="BUNDLE DATA [BUNDLE DATA ...]")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give BUNDLE DATA pairs")
    from aminet_edge.runtime.backends.openvino_backend import cpu_capabilities

    head = ["| bundle, data | variant (backend precision) | image AUROC (vs fp32) | pixel AUROC (vs fp32) | "
            "mask tokens changed | max score rel. diff |", "|---|---|---:|---:|---:|---:|"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(0, len(args.pairs), 2):
            rows += rows_for(Path(args.pairs[k]), Path(args.pairs[k + 1]), Path(tmp), args.batch)
    note = f"\nOpenVINO CPU capabilities here: {', '.join(cpu_capabilities())}\n"
    append_result("openvino_accuracy", "\n".join(head + rows) + "\n" + note)


if __name__ == "__main__":
    main()
