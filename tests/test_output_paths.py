"""Outputs never overwrite what a user keeps: `evaluate --json/--report/--heatmaps` and `benchmark --json`
aimed into the bundle are refused, `demo --out` writes only into a folder it owns, and `evaluate` storing
its F1 thresholds keeps what another command recorded in the bundle while it ran."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from click.testing import CliRunner  # noqa: E402
from test_detector import shared_bundle  # noqa: E402

from aminet_edge.bundle import CONFIG_FILE, read_config, verify_bundle, write_config  # noqa: E402
from aminet_edge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture
def run(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "run", ignore=shutil.ignore_patterns("cache")))


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_outputs_into_the_bundle_are_refused(run: Path, tmp_path: Path) -> None:
    before = _digests(run)
    data = tmp_path / "data"
    data.mkdir()
    weights = read_config(run).artifacts["weights"]["path"]
    for args in (("evaluate", str(run), str(data), "--json", str(run / CONFIG_FILE)),
                 ("evaluate", str(run), str(data), "--json", str(run / weights)),
                 ("evaluate", str(run), str(data), "--report", str(run / CONFIG_FILE)),
                 ("evaluate", str(run), str(data), "--heatmaps", str(run)),
                 ("evaluate", str(run), str(data), "--heatmaps", str(tmp_path)),
                 ("evaluate", str(run), str(data), "--heatmaps", str(data / "test" / "good")),
                 ("benchmark", str(run), "--iterations", "1", "--warmup", "0", "--json", str(run / CONFIG_FILE))):
        code, output = _cli(*args)
        assert code == 1 and ("outside the bundle" in output or "outside it" in output), (args, output)
        assert "Traceback" not in output
    assert _digests(run) == before
    read_config(run)  # still loads


def test_demo_leaves_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from aminet_edge.demo import check_demo_folder
    from aminet_edge.data.synthetic import MARKER

    user = tmp_path / "project"
    user.mkdir()
    (user / "report.md").write_text("my notes")
    (user / "metrics.json").write_text('{"mine": 1}')
    code, output = _cli("demo", "--out", str(user), "--epochs", "1", "--quiet")
    assert code == 1 and "not a folder an earlier demo wrote" in output and "metrics.json" in output, output
    assert sorted(p.name for p in user.iterdir()) == ["metrics.json", "report.md"]
    assert (user / "report.md").read_text() == "my notes"
    (user / "report.md").unlink()
    (user / "metrics.json").unlink()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        check_demo_folder(user)
    (user / "notes.txt").unlink()
    check_demo_folder(user)  # empty: accepted
    (user / "data").mkdir()
    (user / "data" / MARKER).write_text("{}")
    (user / "report.md").write_text("an earlier demo's")
    check_demo_folder(user)  # an earlier demo's folder: accepted


def _test_data(root: Path, n_train: int = 2) -> Path:
    from aminet_edge.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(root, n_train=n_train, n_test_good=2, n_test_defect=1, size=64)


@pytest.mark.parametrize("meanwhile", ["export", "retrain"])
def test_evaluate_keeps_what_was_recorded_while_it_ran(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       meanwhile: str) -> None:
    """An export finishing while evaluate runs keeps its graph records (evaluate used to write back the
    config.json it read at its start: the graphs became unrecorded strays); a bundle retrained meanwhile
    gets no F1 thresholds of the model that was evaluated."""
    import aminet_edge.evaluation.evaluate as ev

    data = _test_data(tmp_path / "data")
    exported = (run / CONFIG_FILE).read_bytes()
    config = read_config(run)
    assert config.artifacts["onnx"]
    if meanwhile == "export":  # evaluate starts on the bundle before its export, which finishes meanwhile
        config.artifacts = {"weights": config.artifacts["weights"]}
        write_config(run, config)
    computed = ev.evaluate
    retrained: list[bytes] = []

    def concurrent(*args, **kwargs):  # type: ignore[no-untyped-def]
        if meanwhile == "export":
            (run / CONFIG_FILE).write_bytes(exported)
        else:  # another model: other calibration
            other = read_config(run)
            other.calibration.image_threshold *= 2
            write_config(run, other)
            retrained.append((run / CONFIG_FILE).read_bytes())
        return computed(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", concurrent)
    metrics = ev.evaluate_bundle(run, data, progress=False, device="cpu")
    after = read_config(run)
    assert set(verify_bundle(run, after).values()) == {"ok"}
    if meanwhile == "export":
        assert after.artifacts == json.loads(exported)["artifacts"]
        assert after.calibration.f1_image_threshold == pytest.approx(metrics["f1_thresholds"]["image"])
    else:
        assert (run / CONFIG_FILE).read_bytes() == retrained[0]  # the F1 thresholds of the old model not stored


def test_build_engine_never_overwrites_a_file_it_did_not_build(run: Path, tmp_path: Path) -> None:
    """`build-engine --out RUN/<weights>` replaced the weights by an engine (and recorded the engine at the
    weights' path, so that `info --verify` said the weights were fine)."""
    from aminet_edge.export import trt_compat

    if not trt_compat.is_installed("tensorrt_rtx"):
        pytest.skip("tensorrt_rtx not installed (pip install tensorrt-rtx)")
    config = read_config(run)
    (run / "notes.txt").write_text("user notes")
    before = _digests(run)
    for name in (config.artifacts["weights"]["path"], config.artifacts["onnx"]["model"]["path"], CONFIG_FILE,
                 "notes.txt"):
        code, output = _cli("build-engine", str(run), "--target", "rtx", "--precision", "fp32", "--arch", "86",
                            "--out", str(run / name))
        assert code == 1 and "is never overwritten" in output, (name, output)
    assert _digests(run) == before
    engine = run / "engines" / "mine.engine"  # a new path, then the engine it recorded there: built (again)
    for _ in range(2):
        code, output = _cli("build-engine", str(run), "--target", "rtx", "--precision", "fp32", "--arch", "86",
                            "--batch", "1", "1", "1", "--out", str(engine))
        assert code == 0, output
    assert set(verify_bundle(run).values()) == {"ok"}


def test_two_records_of_one_file_are_refused(run: Path) -> None:
    from aminet_edge.bundle import BundleError

    data = json.loads((run / CONFIG_FILE).read_text())
    data["artifacts"]["onnx"]["model"]["path"] = data["artifacts"]["weights"]["path"]
    (run / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="artifacts.onnx.model.path'.* is the file artifacts.weights records"):
        read_config(run)


def test_export_refuses_a_bundle_changed_while_it_exported(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set-mask or config edit finishing while `export` runs: the graphs (computing the config they were
    exported from) were recorded as computing the new config, so every check passed and the graph backends
    silently disagreed with torch. Now nothing is installed and config.json is the other command's."""
    import aminet_edge.export.onnx_export as onnx_export
    from aminet_edge.bundle import BundleError

    exported = onnx_export._export
    changed: list[bytes] = []

    def concurrent(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not changed:  # sigma edited (the graph records dropped, as set-mask does) after export read config.json
            config = read_config(run)
            config.score = dataclasses.replace(config.score, sigma=2.0)
            config.artifacts = {"weights": config.artifacts["weights"]}
            write_config(run, config)
            changed.append((run / CONFIG_FILE).read_bytes())
        return exported(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "_export", concurrent)
    graphs = {p.name: p.read_bytes() for p in run.glob("*.onnx")}
    with pytest.raises(BundleError, match="changed while its files were made"):
        onnx_export.export_onnx(run, "fp32", split=False)
    assert (run / CONFIG_FILE).read_bytes() == changed[0]
    assert {p.name: p.read_bytes() for p in run.glob("*.onnx")} == graphs  # nothing installed
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_train_leaves_a_checkpoint_name_that_is_no_file(run: Path, tmp_path: Path, kind: str) -> None:
    """checkpoint.pt replaced by a folder (or a link to a user's file) in the output: train ended in an
    IsADirectoryError traceback (or would write through the link); now one line, and nothing touched."""
    (run / "checkpoint.pt").unlink(missing_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("user data")
    if kind == "folder":
        (run / "checkpoint.pt").mkdir()
        (run / "checkpoint.pt" / "keep.txt").write_text("user data")
    else:
        (run / "checkpoint.pt").symlink_to(victim)
    before = _digests(run)
    data = _test_data(tmp_path / "data", n_train=12)
    for extra in ((), ("--resume",)) if kind == "link" else ((),):  # --resume: "no checkpoint" for a folder
        code, output = _cli("train", str(data), "--out", str(run), "--preset", "tiny", "--image-size", "64",
                            "--epochs", "1", "--quiet", *extra)
        assert code == 1 and "checkpoint.pt is not a regular file" in output and "Traceback" not in output, output
    assert _digests(run) == before and victim.read_text() == "user data"


def test_station_archive_never_overwrites_an_archived_image(tmp_path: Path) -> None:
    """A station restarted the same day with a new result store (results.db deleted or moved, the archive
    kept) numbers its results from 1 again: its NG images replaced the earlier ones of the same ids."""
    from types import SimpleNamespace

    import numpy as np

    from aminet_edge.station.archive import NgArchive
    from aminet_edge.station.store import ResultStore

    image = np.full((16, 16, 3), 0.5, np.float32)
    result = SimpleNamespace(anomaly_map=np.zeros((16, 16), np.float32), mask=np.zeros((16, 16), bool),
                             thresholds=SimpleNamespace(pixel=1.0))
    paths = []
    for db in ("first.db", "second.db"):
        store = ResultStore(tmp_path / db)
        archive = NgArchive(tmp_path / "archive", store, 0, 0)
        path = archive.path_for(1, "cam", "part", 0.0)
        archive.save(path, 1, image if db == "first.db" else 1 - image * 0.5, result)  # type: ignore[arg-type]
        with pytest.raises(FileExistsError, match="exists .archived by a station with another result store"):
            archive.save(path, 1, image, result)  # type: ignore[arg-type]  # a name taken meanwhile
        paths.append(path)
        archive.close()
        store.close()
        if db == "first.db":
            kept = path.read_bytes()
    assert paths[1].name == "000000001_part-2.png" and paths[0].read_bytes() == kept
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [
        "000000001_part-2.png", "000000001_part-2_overlay.png", "000000001_part.png", "000000001_part_overlay.png"]
