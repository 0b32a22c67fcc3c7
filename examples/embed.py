"""Embed aminet-edge in your program: load a bundle once, predict every image of a folder, print decisions.

    python examples/embed.py [BUNDLE] [FOLDER] [--device cuda]

The defaults are what `aminet-edge demo` (scripts/demo.sh) writes; export its graphs first
(`aminet-edge export runs/demo/bundle`, where torch is installed). Needs the runtime only (numpy, Pillow
and a backend: onnxruntime or OpenVINO for the exported graphs, TensorRT on a GPU); torch is not
imported. A bundle without graphs runs only where torch is installed (the torch backend).
"""

import argparse
from pathlib import Path

from aminet_edge import Detector

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("bundle", nargs="?", default="runs/demo/bundle", help="default: %(default)s")
parser.add_argument("folder", nargs="?", default="runs/demo/data/test", help="default: %(default)s")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--sensitivity", type=float, default=0.5, help="0 flags least, 1 most (default: 0.5)")
args = parser.parse_args()

# ---- the embed: these lines are all an application needs ----
try:
    detector = Detector.load(args.bundle, device=args.device, sensitivity=args.sensitivity)  # fastest backend here
except (ImportError, ValueError, RuntimeError, OSError) as exc:  # bundle, backend or argument problem
    raise SystemExit(f"cannot load {args.bundle}: {exc}")
images = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
if not images:
    raise SystemExit(f"no images under {args.folder}")
for result in detector.predict_batch(images):  # a list of Results, in order; a bad file gets .error
    if not result.ok:
        print(f"ERROR    {result.source}: {result.error}")
    else:
        decision = "ANOMALY" if result.is_anomaly else "ok"
        print(f"{decision:8s} {result.normalized_score:6.2f} {result.mask.mean():7.2%}  {result.source}")
print(f"{len(images)} images; backend: {detector.backend_description}")
