"""What the nearest-normal guide costs at inference and in bundle size: `Detector.predict` ms per image of
the same network with the paper's adaptive mask and with the guide, per CPU backend and batch size,
measured interleaved in one process, and the bytes of each bundle's weights and recorded graphs.

Usage: python bench/guide_cost.py --adaptive RUN_A --guided RUN_G [--backends auto onnxruntime openvino ...]
                                  [--batches 1 8] [--repeats 5]
       python bench/guide_cost.py --build DIR [--preset cpu] [--bank-size 48128] ...

Both bundles must be exported (`aminet-edge export RUN`); RUN_G is typically RUN_A after `aminet-edge
set-mask RUN_G DATA --mask nearest-normal` (same weights, so the difference is the mask alone). Backend
"auto" is what `Detector.load` measures and picks for each bundle (its choice is in the note), fp32
graphs otherwise. --build
makes such a pair in DIR/adaptive and DIR/guided instead: `preset`'s network with random AMI-Net weights
(backbone pretrained when its weights are at hand), the guide's bank `--bank-size` tokens pooled from
random frames (jittered), its threshold their held-out 0.99 quantile; both exported fp32 and int8 (with
OpenVINO's int8_static when nncf is installed), as `aminet-edge export RUN --precision int8
--calibration-data` writes them. Timing depends on the bank's size, not its values. Frames: random uint8
RGB at the model's input size.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, median_seconds  # noqa: E402

from aminet_edge import Detector  # noqa: E402
from aminet_edge.bundle import read_config  # noqa: E402


def build_pair(root: Path, preset: str, bank_size: int) -> tuple[Path, Path]:
    """DIR/adaptive and DIR/guided (module docstring), each exported fp32 + int8; returns their paths."""
    import dataclasses

    import torch
    from PIL import Image

    from aminet_edge.bundle import BundleConfig
    from aminet_edge.config import PRESETS, ScoreConfig
    from aminet_edge.export.onnx_export import export_onnx
    from aminet_edge.model.aminet import AMINet
    from aminet_edge.model.features import build_feature_extractor
    from aminet_edge.model.guide import token_features
    from aminet_edge.model.pipeline import save_bundle
    from aminet_edge.training.guide import build_guide

    torch.manual_seed(0)
    model = dataclasses.replace(PRESETS[preset], guide_bank_size=bank_size)
    try:
        extractor = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - weights absent offline: timing is the same with random ones
        print(f"pretrained {model.backbone} unavailable ({exc}); using random backbone weights")
        extractor = build_feature_extractor(model.backbone, image_size=model.image_size, pretrained=False)
    extractor.eval()
    aminet = AMINet(model, extractor.channels)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (model.image_size,) * 2 + (3,), dtype=np.uint8) for _ in range(12)]
    mean, std = np.array(extractor.mean, np.float32), np.array(extractor.std, np.float32)
    x = torch.from_numpy(((np.stack(frames) / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        tokens = token_features(extractor(x), model.patch_size).reshape(-1, extractor.channels)
    fit, held = tokens[: len(tokens) * 3 // 4], tokens[len(tokens) * 3 // 4:]
    reps = -(-bank_size // len(fit))
    gen = torch.Generator().manual_seed(2)
    fit = (fit.repeat(reps, 1) + 0.05 * fit.std() * torch.randn(len(fit) * reps, fit.shape[1], generator=gen))[:bank_size]
    guide, summary = build_guide(fit, held, dataclasses.replace(model, mask="nearest_normal", guide_quantile=0.99))
    out = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as calib:
        warnings.simplefilter("ignore")  # tracer warnings
        (Path(calib) / "train" / "good").mkdir(parents=True)
        for i, frame in enumerate(frames[:4]):
            Image.fromarray(frame).save(Path(calib) / "train" / "good" / f"{i}.png")
        for kind, mask in (("adaptive", "adaptive"), ("guided", "nearest_normal")):
            path = root / kind
            config = BundleConfig(model=dataclasses.replace(model, mask=mask, guide_quantile=0.99),
                                  in_channels=extractor.channels, score=ScoreConfig(map="reconstruction"),
                                  mean=tuple(extractor.mean), std=tuple(extractor.std),
                                  train={"guide": summary} if mask != "adaptive" else {})
            path.mkdir(parents=True, exist_ok=True)
            save_bundle(path, config, extractor, aminet, guide if mask != "adaptive" else None)
            export_onnx(path, "int8", calibration_data=[calib] if importlib.util.find_spec("nncf") else ())
            out.append(path)
    return out[0], out[1]


def bundle_bytes(bundle: Path) -> tuple[int, int]:
    """(weights bytes, bytes of every recorded graph file, each file once)."""
    artifacts = read_config(bundle).artifacts
    graphs = {r["path"]: r["bytes"] for r in (artifacts.get("onnx") or {}).values()}
    return int(artifacts["weights"]["bytes"]), int(sum(graphs.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", type=Path)
    parser.add_argument("--guided", type=Path)
    parser.add_argument("--build", type=Path, help="make the pair in BUILD/adaptive, BUILD/guided (reused if there)")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--bank-size", type=int, default=48128, help="--build: the guide's bank rows")
    parser.add_argument("--backends", nargs="+",
                        default=["auto", "onnxruntime", "openvino", "onnxruntime-split", "openvino-split"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.build:
        if (args.build / "guided" / "config.json").is_file():
            args.adaptive, args.guided = args.build / "adaptive", args.build / "guided"
        else:
            args.adaptive, args.guided = build_pair(args.build, args.preset, args.bank_size)
    if args.adaptive is None or args.guided is None:
        raise SystemExit("give --adaptive and --guided, or --build DIR")
    guided = read_config(args.guided)
    if guided.model.mask != "nearest_normal" or read_config(args.adaptive).model.mask != "adaptive":
        raise SystemExit("--adaptive must use the adaptive mask and --guided the nearest-normal guide")
    size = guided.model.image_size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(max(args.batches))]
    load_start = os.getloadavg()[0]
    # "auto": the backend Detector.load measures and picks for each bundle (named in the note)
    detectors = {(b, kind): Detector.load(run, backend=b, threshold=1.0, pixel_threshold=1.0,
                                          batch_size=max(args.batches), **({} if b == "auto" else {"precision": "fp32"}))
                 for b in args.backends for kind, run in (("adaptive", args.adaptive), ("guided", args.guided))}
    picked = {kind: f"{det.backend} {det.precision}" for (b, kind), det in detectors.items() if b == "auto"}
    samples: dict[tuple[str, str, int], list[float]] = {}
    for det in detectors.values():
        det.predict(frames)  # warm-up
    for _ in range(args.repeats):  # interleaved: a shared machine's load hits every variant alike
        for n in args.batches:
            for (b, kind), det in detectors.items():
                seconds = median_seconds(lambda: det.predict(frames[:n]), 1, 0)  # noqa: B023 (called here)
                samples.setdefault((b, kind, n), []).append(seconds / n)
    for det in detectors.values():
        det.close()
    auto = f"; auto picked {picked['adaptive']} (adaptive), {picked['guided']} (guided)" if picked else ""
    bank = guided.train.get("guide", {}).get("bank_tokens", "?")
    rows = ["| backend | batch | adaptive ms/image | guided ms/image | guided / adaptive |", "|---|---:|---:|---:|---:|"]
    for b in args.backends:
        for n in args.batches:
            a, g = (float(np.median(samples[(b, k, n)])) for k in ("adaptive", "guided"))
            rows.append(f"| {b} | {n} | {a * 1e3:.1f} | {g * 1e3:.1f} | {g / a:.2f}x |")
            print(rows[-1], flush=True)
    (wa, ga), (wg, gg) = bundle_bytes(args.adaptive), bundle_bytes(args.guided)
    mib = 2**20
    sizes = ("\n| bundle | weights MiB | graphs MiB | total MiB |\n|---|---:|---:|---:|\n"
             f"| adaptive | {wa / mib:.1f} | {ga / mib:.1f} | {(wa + ga) / mib:.1f} |\n"
             f"| guided | {wg / mib:.1f} | {gg / mib:.1f} | {(wg + gg) / mib:.1f} |\n"
             f"| guided - adaptive | {(wg - wa) / mib:+.1f} | {(gg - ga) / mib:+.1f} | {(wg + gg - wa - ga) / mib:+.1f} |\n")
    note = (f"\n`{args.adaptive}` vs `{args.guided}` (bank {bank} tokens x {guided.in_channels} channels), "
            f"{size} px frames, batches {args.batches}, Detector batch_size {max(args.batches)}, median of "
            f"{args.repeats} interleaved repeats, load average {load_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end{auto}; sizes: weights and every graph config.json records\n")
    append_result("guide_cost", "\n".join(rows) + "\n" + sizes + note)


if __name__ == "__main__":
    main()
