"""The CLI verbs: thin wrappers that do the job and print one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from aminet_edge.cli import main
from aminet_edge.data.synthetic import make_synthetic_dataset


def test_train_then_evaluate(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "d", n_train=10, n_test_good=2, n_test_defect=1, size=64)
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                               "--image-size", "64", "--embed-dim", "32", "--depth", "1", "--epochs", "1",
                               "--mask", "nearest-normal", "--guide-bank-size", "100", "--quiet"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["embed_dim"] == 32 and config["model"]["backbone"] == "efficientnet_lite0"
    assert config["model"]["mask"] == "nearest_normal" and config["train"]["guide"]["bank_tokens"] == 100
    res = runner.invoke(main, ["evaluate", str(tmp_path / "run"), str(data), "--json", str(tmp_path / "m.json"),
                               "--baseline", "knn", "--bank-size", "500", "--report", str(tmp_path / "r.md"),
                               "--quiet"])
    assert res.exit_code == 0, res.output
    printed, stored = json.loads(res.stdout), json.loads((tmp_path / "m.json").read_text())
    assert printed["image_auroc"] == stored["image_auroc"]
    knn = stored["baseline_knn"]
    assert (knn["bank_patches"], knn["train_patches"]) == (500, 10 * 64)  # every training image, 8 x 8 patches
    assert printed["baseline_knn"]["pixel_auroc"] == knn["pixel_auroc"]
    assert 0 <= stored["mask_coverage"]["mask_recall"] <= 1
    report = (tmp_path / "r.md").read_text()
    assert "| metric | AMI-Net | kNN baseline |" in report and "500 of" in report and "mask recall" in report


def test_train_ranges_are_checked_before_anything_runs(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "d", n_train=2, n_test_good=0, n_test_defect=0, size=32)
    runner = CliRunner()
    for option, value in [("--epochs", "0"), ("--epochs", "-1"), ("--batch-size", "0"), ("--few-shot", "0"),
                          ("--lr", "0"), ("--lr", "-1e-3"), ("--image-size", "0"), ("--clusters", "0"),
                          ("--guide-quantile", "1"), ("--guide-bank-size", "0"), ("--mask", "knn")]:
        res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny",
                                   option, value])
        assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output, (option, res.output)
    res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny", "--lr", "nan"])
    assert res.exit_code == 1 and "lr must be a finite number" in res.output
    res = runner.invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny", "--resume"])
    assert res.exit_code == 1 and "no checkpoint" in res.output
    assert not (tmp_path / "o").exists()


def test_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--preset", "tiny"])
    assert res.exit_code == 1 and "no known data layout" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = runner.invoke(main, ["evaluate", str(tmp_path / "empty"), str(tmp_path / "empty")])
    assert res.exit_code == 1 and "not an aminet-edge bundle" in res.output


def test_wide_resnet_without_weights_says_how(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    data = make_synthetic_dataset(tmp_path / "d", n_train=2, n_test_good=0, n_test_defect=0, size=32)
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), "--epochs", "1"])
    assert res.exit_code == 1 and "--weights PATH" in res.output
    assert not (tmp_path / "o").exists()  # a run that could not start leaves no bundle folder behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "mine"), "--epochs", "1"])
    assert res.exit_code == 1 and [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_module_entry_point_and_info() -> None:
    out = subprocess.run([sys.executable, "-m", "aminet_edge", "info"], capture_output=True, text=True, check=True)
    assert "op backends:" in out.stdout and "reference: available" in out.stdout


def test_predict_on_a_folder_of_folders_suggests_recursive(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "d", n_train=2, n_test_good=1, n_test_defect=1, size=32)
    (tmp_path / "run").mkdir()  # never opened: the inputs are checked first
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(data / "test"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"no images found in {data / 'test'} (4 in their subfolders: add --recursive)" in res.output
    run = str(tmp_path / "run")
    res = CliRunner().invoke(main, ["predict", run, run, "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.rstrip().endswith(f"no images found in {tmp_path / 'run'}")
