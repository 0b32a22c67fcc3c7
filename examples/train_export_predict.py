"""The whole path in one script: generate demo data, train, export ONNX, build an engine, predict.

    python examples/train_export_predict.py [--out runs/example] [--epochs 5] [--no-pretrained]

1. writes the synthetic surface-defect data set (MVTec layout) under OUT/data;
2. trains the `tiny` preset for a few epochs (CPU is fine) into the bundle OUT/bundle;
3. exports the ONNX graphs into the bundle (the CPU runtime's onnxruntime backends use them);
4. builds a TensorRT-RTX engine ahead of time for the chosen compute capabilities (no GPU needed;
   skipped with the reason when tensorrt_rtx is not installed). It is not run here: it needs an RTX GPU;
5. loads the bundle with the torch-free Detector (the fastest CPU backend) and predicts the test images,
   checking that the exported graphs agree with the training-time (torch) model.
Needs the `train` and `onnxruntime` extras; `rtx` for step 4; `weights` for the pretrained backbone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/example"), help="folder for data/ and bundle/")
    p.add_argument("--preset", default="tiny", help="model preset (tiny, cpu, paper)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument("--n-train", type=int, default=40, help="generated normal training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pretrained", action="store_true",
                   help="random backbone weights (fast smoke test; detections are then meaningless)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16"], help="engine precision")
    p.add_argument("--compute-capability", default="89",
                   help="GPU compute capabilities of the RTX engine, comma-separated: 80, 86 (RTX 30), 89 (RTX 40), "
                        "120 (RTX 50); each one adds build time")
    p.add_argument("--skip-engine", action="store_true", help="do not build the TensorRT-RTX engine")
    return p.parse_args(argv)


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        capabilities = [int(c) for c in args.compute_capability.split(",") if c.strip()]
    except ValueError:
        print(f"--compute-capability must be numbers like 86,89, got {args.compute_capability!r}", file=sys.stderr)
        return 2
    from aminet_edge.config import PRESETS, TrainConfig
    from aminet_edge.data.synthetic import make_synthetic_dataset

    if args.preset not in PRESETS:
        print(f"unknown preset {args.preset!r}; choose one of {', '.join(sorted(PRESETS))}", file=sys.stderr)
        return 2

    t = step("1. synthetic data")
    data = make_synthetic_dataset(args.out / "data", n_train=args.n_train, n_test_good=4, n_test_defect=2,
                                  seed=args.seed)
    print(f"{data} ({time.perf_counter() - t:.1f} s)")

    t = step(f"2. train preset {args.preset!r}, {args.epochs} epoch(s)")
    from aminet_edge.training.trainer import train

    bundle = train(data, args.out / "bundle", model=PRESETS[args.preset],
                   train_cfg=TrainConfig(epochs=args.epochs, lr=5e-4, seed=args.seed),  # 5e-4: the demo's rate
                   pretrained=not args.no_pretrained, progress=False)
    print(f"bundle {bundle} ({time.perf_counter() - t:.1f} s)")

    t = step("3. export ONNX")
    from aminet_edge.export.onnx_export import export_onnx

    exported = export_onnx(bundle, precision="fp32")
    print(f"{', '.join(Path(f).name for f in exported.values())} in {bundle} ({time.perf_counter() - t:.1f} s)")

    t = step(f"4. TensorRT-RTX engine, ahead of time ({args.precision}, compute capability {args.compute_capability})")
    if args.skip_engine:
        print("skipped (--skip-engine)")
    else:
        from aminet_edge.export.engine import build_engine

        try:
            engine = build_engine(bundle, target="rtx", precision=args.precision, batch=(1, 1, 8),
                                  compute_capabilities=capabilities)
        except ImportError as exc:  # tensorrt_rtx missing: the rest of the path does not need it
            print(f"skipped: {exc}")
        except ValueError as exc:  # a compute capability TensorRT-RTX cannot build for
            print(f"engine not built: {exc}", file=sys.stderr)
            return 2
        else:
            print(f"{engine} ({time.perf_counter() - t:.1f} s); not run here: it needs an RTX GPU")

    t = step("5. predict with the torch-free Detector")
    from aminet_edge import Detector
    from aminet_edge.data.datasets import load_dataset

    test = load_dataset(data).test
    detector = Detector.load(bundle)  # auto: the fastest CPU backend, an exported graph
    results = detector.predict_batch([s.path for s in test])
    for sample, r in zip(test, results):
        print(f"{'ANOMALY' if r.is_anomaly else 'ok':8s} {r.normalized_score:6.2f}  "
              f"truth={sample.defect_type:8s} {Path(sample.path).name}")
    correct = sum(r.is_anomaly == bool(s.label) for s, r in zip(test, results))
    print(f"{correct}/{len(test)} decisions right; backend: {detector.backend_description} "
          f"({time.perf_counter() - t:.1f} s)")

    # the exported graph must agree with the model as trained (a classic deployment bug otherwise)
    reference = Detector.load(bundle, backend="torch").predict_batch([s.path for s in test])
    worst = max(abs(a.score - b.score) / max(abs(b.score), 1e-12) for a, b in zip(results, reference))
    print(f"{detector.backend} vs torch: largest relative image-score difference {worst:.2e}")
    if worst > 1e-3:  # fp32 graphs differ from torch by float rounding only (~1e-6)
        print("the exported graphs disagree with the trained model: do not deploy this bundle", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
