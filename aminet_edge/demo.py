"""The embedded default job: synthetic surface-defect data -> train -> evaluate -> report with heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

from aminet_edge.config import PRESETS, TrainConfig

DEMO_LR = 5e-4  # the tiny preset on 60 images converges in tens of epochs at this rate (1e-4 is slower)


def run_demo(out: str | Path, epochs: int = 20, seed: int = 0, progress: bool = True,
             device: str = "auto") -> Path:
    """Run the whole job under `out` and return the path of `report.md`.

    Writes out/data (MVTec layout), out/bundle, out/metrics.json, out/heatmaps/*.png, out/report.md.
    device: where training and evaluation run ("auto", "cpu", "cuda", "cuda:N").
    """
    from aminet_edge.data.synthetic import make_synthetic_dataset
    from aminet_edge.evaluation.evaluate import evaluate_bundle
    from aminet_edge.training.trainer import train

    out = Path(out)
    data = make_synthetic_dataset(out / "data", seed=seed)
    model = PRESETS["tiny"]
    bundle = train(data, out / "bundle", model=model,
                   train_cfg=TrainConfig(epochs=epochs, lr=DEMO_LR, seed=seed), progress=progress, device=device)
    metrics = evaluate_bundle(bundle, data, json_path=out / "metrics.json", heatmaps=out / "heatmaps",
                              progress=progress, device=device)
    config = json.loads((Path(bundle) / "config.json").read_text())
    rows = [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float)]
    report = out / "report.md"
    report.write_text("\n".join([
        "# aminet-edge demo report", "",
        f"Synthetic surface-defect data in `{data}`; model preset `tiny` ({model.backbone}, "
        f"{model.image_size} px, D={model.embed_dim}, depth {model.inpaint_depth}), {epochs} epochs "
        f"({config['train']['train_seconds']} s training on {config['train']['device']}, "
        f"{config['train']['precision']}).", "",
        "| metric | value |", "|---|---|", *rows, "",
        f"Heatmaps (image | anomaly map | masks): `{out / 'heatmaps'}`. Bundle: `{bundle}`.", "",
    ]))
    return report
