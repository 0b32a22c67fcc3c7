"""The embedded default job: synthetic surface-defect data -> train -> evaluate -> report with heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

from aminet_edge.config import PRESETS, TrainConfig
from aminet_edge.files import atomic_write_text

DEMO_LR = 5e-4  # the tiny preset on 60 images converges in tens of epochs at this rate (1e-4 is slower)
DEMO_FILES = ("data", "bundle", "metrics.json", "heatmaps", "report.md")  # what a demo writes under its folder


def check_demo_folder(out: Path) -> None:
    """ValueError unless `out` is new, empty or an earlier demo's folder (its data/synthetic.json, and
    nothing but DEMO_FILES): a demo overwrites its report, metrics and heatmaps, never a user's."""
    from aminet_edge.data.synthetic import MARKER

    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder: choose a new or empty --out folder")
    held = sorted(p.name for p in out.iterdir())
    others = [name for name in held if name not in DEMO_FILES]
    if held and (others or not (out / "data" / MARKER).is_file()):
        listed = ", ".join((others or held)[:5])
        raise ValueError(f"{out} is not a folder an earlier demo wrote (it holds {listed}): its files are left "
                         "alone; choose a new or empty --out folder")


def run_demo(out: str | Path, epochs: int = 20, seed: int = 0, progress: bool = True,
             device: str = "auto") -> Path:
    """Run the whole job under `out` and return the path of `report.md`.

    Writes out/data (MVTec layout), out/bundle, out/metrics.json, out/heatmaps/*.png, out/report.md; `out` must
    be new, empty or an earlier demo's folder (check_demo_folder).
    device: where training and evaluation run ("auto", "cpu", "cuda", "cuda:N").
    """
    from aminet_edge.data.synthetic import make_synthetic_dataset
    from aminet_edge.evaluation.evaluate import evaluate_bundle
    from aminet_edge.training.trainer import train

    out = Path(out)
    check_demo_folder(out)
    data = make_synthetic_dataset(out / "data", seed=seed)
    model = PRESETS["tiny"]
    bundle = train(data, out / "bundle", model=model,
                   train_cfg=TrainConfig(epochs=epochs, lr=DEMO_LR, seed=seed), progress=progress, device=device)
    metrics = evaluate_bundle(bundle, data, json_path=out / "metrics.json", heatmaps=out / "heatmaps",
                              progress=progress, device=device)
    config = json.loads((Path(bundle) / "config.json").read_text())
    rows = [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float)]
    report = out / "report.md"
    atomic_write_text(report, "\n".join([
        "# aminet-edge demo report", "",
        f"Synthetic surface-defect data in `{data}`; model preset `tiny` ({model.backbone}, "
        f"{model.image_size} px, D={model.embed_dim}, depth {model.inpaint_depth}), {epochs} epochs "
        f"({config['train']['train_seconds']} s training on {config['train']['device']}, "
        f"{config['train']['precision']}).", "",
        "| metric | value |", "|---|---|", *rows, "",
        f"Heatmaps (image | anomaly map | masks): `{out / 'heatmaps'}`. Bundle: `{bundle}`.", "",
    ]))
    return report
