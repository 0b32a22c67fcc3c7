"""Users' files: atomic writes and owned deletes (aminet_edge/files.py), and the bundle writes built on them.

A crash is simulated by making the k-th file operation (a write's fsync, a rename or a delete) raise, for
every k the operation performs; after each, the bundle must load and be the previous one or the new one.
The bundle is the runtime tests' shared tiny bundle (tests/test_detector.py), copied per case.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge import files  # noqa: E402
from aminet_edge.bundle import BundleError, read_config, verify_bundle, weights_name  # noqa: E402
from aminet_edge.cli import main  # noqa: E402
from aminet_edge.files import atomic_replace, atomic_write_bytes, remove_owned  # noqa: E402
from aminet_edge.runtime.backends import auto  # noqa: E402


# ---- aminet_edge/files.py -------------------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_replace(path, half)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]  # no temporary file left
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_new_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "b", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o664


def test_remove_owned_deletes_recorded_regular_files_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.png").write_bytes(b"user")
    (root / "mine.onnx").write_bytes(b"1")
    (root / "sub" / "mine.engine").write_bytes(b"2")
    (root / "unrecorded.onnx").write_bytes(b"3")
    (root / "dir.onnx").mkdir()
    os.symlink(outside, root / "linked")  # a folder link: nothing is deleted through it
    os.symlink(outside / "keep.png", root / "link.png")  # a file link: neither it nor its target is deleted
    removed = remove_owned(root, ["mine.onnx", "sub/mine.engine", "linked/keep.png", "link.png", "dir.onnx",
                                  "../outside/keep.png", str(outside / "keep.png"), "absent.onnx"], "test")
    assert removed == [root / "mine.onnx", root / "sub" / "mine.engine"]
    assert (outside / "keep.png").read_bytes() == b"user" and (root / "unrecorded.onnx").exists()
    assert (root / "link.png").is_symlink() and (root / "dir.onnx").is_dir()


# ---- train --out: only into a bundle (or a new / empty folder) ----------------------------------------------
def test_train_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    from aminet_edge.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=3, n_test_good=0, n_test_defect=0, size=32)
    out = tmp_path / "mine"
    (out / "engines").mkdir(parents=True)
    (out / "model.onnx").write_bytes(b"the user's own graph")
    (out / "engines" / "x.engine").write_bytes(b"the user's own engine")
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1"])
    assert res.exit_code == 1 and "is a folder that is not an aminet-edge bundle" in res.output, res.output
    assert "engines, model.onnx" in res.output and "Traceback" not in res.output
    assert (out / "model.onnx").read_bytes() == b"the user's own graph"
    assert (out / "engines" / "x.engine").read_bytes() == b"the user's own engine"
    assert sorted(p.name for p in out.iterdir()) == ["engines", "model.onnx"]  # nothing written either
    (out / "config.json").write_text("{broken")  # a damaged bundle: its records are unknown, nothing is touched
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1"])
    assert res.exit_code == 1 and "not a readable bundle, so nothing is written into it" in res.output
    assert (out / "model.onnx").exists()
    from aminet_edge.training.trainer import train

    with pytest.raises(BundleError, match="000.png exists and is not a directory"):
        train(data, data / "train" / "good" / "000.png", pretrained=False)


def test_owned_bundle_accepts_a_new_empty_or_checkpoint_folder(tmp_path: Path) -> None:
    from aminet_edge.bundle import owned_bundle
    from aminet_edge.training.trainer import TRAINING_FILES

    assert owned_bundle(tmp_path / "new") is None and owned_bundle(tmp_path) is None
    for name in (*TRAINING_FILES, ".weights.safetensors.0a1b2c3d.tmp"):  # a crashed run: checkpoint, temp file
        (tmp_path / name).write_bytes(b"x")
    assert owned_bundle(tmp_path, TRAINING_FILES) is None
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not an aminet-edge bundle .*holds notes.txt\\)"):
        owned_bundle(tmp_path, TRAINING_FILES)


def test_training_too_few_images_is_refused_with_the_reason(tmp_path: Path) -> None:
    from aminet_edge.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=1, n_test_good=0, n_test_defect=0, size=32)
    res = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny"])
    assert res.exit_code == 1 and "1 normal training image: at least 3 are needed" in res.output, res.output
    assert not (tmp_path / "o").exists()


# ---- crashes: the previous bundle or the new one, loadable, at every instant ---------------------------------
class Crash(Exception):
    pass


def fail_at(monkeypatch: pytest.MonkeyPatch, k: int) -> list[str]:
    """Make the k-th file operation (fsync of a written file or folder, rename, delete) raise Crash;
    k < 0 counts them without failing. Returns the log of operations seen."""
    seen: list[str] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

    def step(what: str) -> None:
        seen.append(what)
        if len(seen) - 1 == k:
            raise Crash(what)

    def fsync(fd: int) -> None:
        step("fsync")
        real_fsync(fd)

    def replace(src, dst) -> None:  # type: ignore[no-untyped-def]
        step(f"rename {Path(dst).name}")
        real_replace(src, dst)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if not self.name.endswith(".tmp"):  # a temporary file's cleanup is not a step of the write
            step(f"delete {self.name}")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    return seen


def assert_every_crash_leaves_old_or_new(tmp_path: Path, source: Path, operation: Callable[[Path], None],
                                         state: Callable[[Path], object]) -> None:
    """Run `operation` on copies of `source`, crashing at each of its file operations in turn; after each
    crash the bundle loads (config.json read and every file it records verified: what each backend checks
    at load) and `state` is the old or the new one."""
    dry = Path(shutil.copytree(source, tmp_path / "dry"))
    old = state(dry)
    with pytest.MonkeyPatch.context() as mp:
        steps = fail_at(mp, -1)
        operation(dry)
    new = state(dry)
    assert new != old and len(steps) >= 3, steps
    for k in range(len(steps)):
        bundle = Path(shutil.copytree(source, tmp_path / f"crash{k}"))
        with pytest.MonkeyPatch.context() as mp:
            fail_at(mp, k)
            with pytest.raises(Crash):
                operation(bundle)
        got = state(bundle)
        assert got in (old, new), f"crash at {steps[k]} (step {k}): neither the old nor the new bundle"
        config = read_config(bundle)
        problems = {p: v for p, v in verify_bundle(bundle, config).items() if v != "ok" and "not recorded" not in v}
        assert not problems, (steps[k], problems)


def test_rewriting_weights_is_crash_safe(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A retrain or set-mask (save_bundle) killed at any file operation leaves the old or the new bundle."""
    import copy

    from aminet_edge.model.pipeline import load_pipeline, save_bundle

    source = shared_bundle(tmp_path_factory)
    assert "onnx" in read_config(source).artifacts  # graphs recorded: they are deleted only after config.json
    pipeline, config = load_pipeline(source)
    with torch.no_grad():
        next(pipeline.aminet.parameters()).add_(1.0)  # new weights
    config.calibration.image_threshold *= 2  # type: ignore[union-attr]

    def retrain(bundle: Path) -> None:
        save_bundle(bundle, copy.deepcopy(config), pipeline.extractor, pipeline.aminet)

    def state(bundle: Path) -> object:
        config = read_config(bundle)
        return config.artifacts["weights"]["sha256"], config.calibration.image_threshold  # type: ignore[union-attr]

    assert_every_crash_leaves_old_or_new(tmp_path, source, retrain, state)
    done = Path(shutil.copytree(source, tmp_path / "done"))
    retrain(done)
    new = read_config(done)
    assert new.artifacts["weights"]["path"] == weights_name(new.artifacts["weights"]["sha256"])
    auto_cache = auto.CACHE_FILE.parts[0]  # backend auto's measured choice, if a test loaded the shared bundle
    assert sorted(p.name for p in done.iterdir() if p.name != auto_cache) == ["config.json",
                                                                              new.artifacts["weights"]["path"]]


def test_reexport_is_crash_safe(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that replaces recorded graphs of other content, killed at any file operation, leaves the
    old graphs (recorded and intact) or the new ones; never a recorded graph whose file differs. (The
    graph is traced once; the crashing runs stage its bytes, as _export would.)"""
    from aminet_edge.bundle import make_record, write_config
    from aminet_edge.export import onnx_export
    from aminet_edge.files import write_temp

    source = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "source"))
    graph = (source / "model.onnx").read_bytes()  # what export writes for this bundle (deterministic)
    # the recorded single graph made different from what export writes (as an older exporter's would be)
    config = read_config(source)
    shutil.copy(source / "model_b.onnx", source / "model.onnx")
    config.artifacts["onnx"]["model"] = dict(config.artifacts["onnx"]["model"],
                                             **make_record(source, source / "model.onnx"))
    write_config(source, config)
    monkeypatch.setattr(onnx_export, "_export", lambda module, args, io, path, opset: write_temp(
        path, lambda tmp: tmp.write_bytes(graph)))

    def state(bundle: Path) -> object:
        rec = read_config(bundle).artifacts.get("onnx", {}).get("model")
        return None if rec is None else rec["sha256"]

    old, seen = state(source), set()

    def state_or_unrecorded(bundle: Path) -> object:
        got = state(bundle)
        seen.add(got)
        return old if got is None else got  # un-recorded first: the previous bundle without that graph

    assert_every_crash_leaves_old_or_new(tmp_path / "runs", source, lambda b: onnx_export.export_onnx(
        b, split=False), state_or_unrecorded)
    assert len(seen - {None}) == 2  # both the old and the new graph were seen after some crash


def test_identical_reexport_touches_no_file(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from aminet_edge.export.onnx_export import export_onnx

    bundle = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "b"))
    inode = os.stat(bundle / "model.onnx").st_ino
    export_onnx(bundle, split=False)
    assert os.stat(bundle / "model.onnx").st_ino == inode  # the same bytes: not rewritten
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []


def test_edited_sigma_is_refused_by_every_backend(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """score.sigma and model.mask_lambda are baked into the single graph: a config edited since export is
    refused whichever backend is asked for (torch and the split graphs would use the edit)."""
    import json

    from aminet_edge.runtime import Detector

    bundle = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "b"))
    raw = json.loads((bundle / "config.json").read_text())
    for key, value in (("sigma", 2.0),):
        raw["score"][key] = value
    (bundle / "config.json").write_text(json.dumps(raw))
    for backend in ("torch", "onnxruntime", "onnxruntime-split", "auto"):
        with pytest.raises(BundleError, match="model.sigma' the file computes score.sigma = 4.0 but config.json "
                                              "says 2.0"):
            Detector.load(bundle, backend=backend)
    raw["score"]["sigma"] = 4.0
    raw["model"]["mask_lambda"] = np.float64(0.75).item()
    (bundle / "config.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="mask_lambda' the file computes model.mask_lambda = 0.5"):
        Detector.load(bundle, backend="torch")
