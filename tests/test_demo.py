"""The README's main job: `aminet-edge demo` end to end (1 epoch here to stay CI-sized)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from aminet_edge.cli import main


def test_demo_writes_report_metrics_and_heatmaps(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["per_type"]) == {"scratch", "hole", "stain"}
    assert 0.5 < metrics["image_auroc"] <= 1.0 and 0.5 < metrics["pixel_auroc"] <= 1.0
    report = (tmp_path / "report.md").read_text()
    assert f"| image_auroc | {metrics['image_auroc']:.4f} |" in report
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == metrics["images"] == 40
