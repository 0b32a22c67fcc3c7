"""Bundle integrity: every file recorded with its sha256 and checked at load, paths kept inside the
bundle, stale files from an earlier training refused, and each bundle problem a BundleError (one CLI line).

One test per defect of issue 12 (1, 2, 7, 8 and the permission / symlink points of 11); the field
checks of defect 6 are in tests/test_bundle.py. The bundle is the runtime tests' shared tiny bundle
(tests/test_detector.py), copied per test; two tests train a 1-epoch 64 px model on 10 generated images.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from test_detector import fake_engine, generated_images, set_engines, shared_bundle  # noqa: E402

from aminet_edge import bundle as bundle_mod  # noqa: E402
from aminet_edge.bundle import (SCHEMA_VERSION, BundleError, make_record, read_config,  # noqa: E402
                                verify_bundle, write_config)
from aminet_edge.cli import main  # noqa: E402
from aminet_edge.runtime import Detector, EngineError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of the shared exported bundle (model, model_a, model_b fp32 graphs)."""
    return Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "b"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aminet_edge.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n_train=10, n_test_good=1, n_test_defect=1,
                                  size=64)


def quick_train(data: Path, out: Path, seed: int = 0, **kw) -> Path:  # type: ignore[no-untyped-def]
    from aminet_edge.config import ModelConfig, TrainConfig
    from aminet_edge.training.trainer import train

    model = ModelConfig(backbone="efficientnet_lite0", image_size=64, embed_dim=32, num_heads=4, inpaint_depth=1,
                        num_clusters=4)
    return train(data, out, model=model, train_cfg=TrainConfig(epochs=1, batch_size=4, seed=seed),
                 pretrained=False, progress=False, **kw)


# ---- defect 1: a relative bundle path with checksummed engine records ------------------------------------
def test_relative_bundle_path_with_checksummed_engine(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.runtime.backends.tensorrt_backend import find_engine, installed_flavours, list_engines, verify_engine

    record = fake_engine(copy)
    assert len(record["sha256"]) == 64  # the record carries a checksum, so the check really runs
    set_engines(copy, [record])
    monkeypatch.chdir(copy.parent)
    rel = Path(copy.name)
    (info,) = list_engines(rel)
    assert info.path.resolve() == (copy / record["path"]).resolve()
    verify_engine(rel, read_config(rel), info)  # joined once: found and its checksum matches
    if "tensorrt_rtx" in installed_flavours():
        assert [e.meta["sha256"] for e in find_engine(rel, read_config(rel))] == [record["sha256"]]
    (copy / record["path"]).write_bytes(b"engine bytez")  # same size, other content
    with pytest.raises(EngineError, match="sha256 differs.*aminet-edge build-engine b --target rtx --precision fp16"):
        verify_engine(rel, read_config(rel), info)


# ---- defect 2: retraining into a directory with exported graphs ---------------------------------------------
def test_retraining_removes_and_refuses_stale_graphs(data: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from aminet_edge.export.onnx_export import export_onnx

    run = quick_train(data, tmp_path / "run")
    export_onnx(run, "fp32", split=False)
    old_graph = (run / "model.onnx").read_bytes()
    assert Detector.load(run, backend="onnxruntime").backend == "onnxruntime"
    with caplog.at_level(logging.WARNING, logger="aminet_edge.bundle"):
        quick_train(data, run, seed=1)  # new weights into the same directory
    assert f"removed {run / 'model.onnx'}" in caplog.text and not (run / "model.onnx").exists()
    assert set(read_config(run).artifacts) == {"weights"}
    with pytest.raises(BundleError, match="model.onnx not found: export it"):
        Detector.load(run, backend="onnxruntime")
    (run / "model.onnx").write_bytes(old_graph)  # the old graph put back by hand: still never used by name
    with pytest.raises(BundleError, match="model.onnx is not recorded in config.json .*earlier training"):
        Detector.load(run, backend="onnxruntime")
    assert Detector.load(run).backend == "torch"  # auto skips the stale graph: the new weights are used
    assert "not recorded" in verify_bundle(run)["model.onnx"]


def test_unrecorded_int8_graph_is_not_picked_by_name(copy: Path) -> None:
    """An int8 graph lying in the bundle without a record is neither the default nor loadable."""
    shutil.copy(copy / "model.onnx", copy / "model_int8.onnx")
    assert Detector.load(copy, backend="onnxruntime").precision == "fp32"
    with pytest.raises(BundleError, match="model_int8.onnx is not recorded"):
        Detector.load(copy, backend="onnxruntime", precision="int8")


def test_graph_from_other_weights_is_refused(copy: Path) -> None:
    config = read_config(copy)
    config.artifacts["onnx"]["model"]["weights_sha256"] = "0" * 64
    write_config(copy, config)
    with pytest.raises(BundleError, match="made from other weights"):
        Detector.load(copy, backend="onnxruntime")


# ---- defect 6 (the part that needs graphs): the graph's real input size against the config -------------------
def test_graph_input_size_must_match_the_config(copy: Path) -> None:
    """A config edited to another image size (records edited along) is refused by the graph's own shape."""
    data = json.loads((copy / "config.json").read_text())
    data["model"]["image_size"] = data["preprocess"]["image_size"] = 128
    for record in data["artifacts"]["onnx"].values():
        record["input_size"] = 128
    (copy / "config.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"graph input images is \[.*64, 64\], the bundle's config says "
                                          r"\(B, 3, 128, 128\)"):
        Detector.load(copy, backend="onnxruntime")


# ---- defect 7: bundle problems are BundleError, one CLI line ------------------------------------------------
def test_truncated_and_unreadable_weights_are_bundle_errors(copy: Path) -> None:
    weights = copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match="weights file is 1000 bytes, .* recorded"):
        Detector.load(copy, backend="torch")
    config = read_config(copy)  # recorded as it is (e.g. copied truncated before export): safetensors' error
    config.artifacts["weights"] = make_record(copy, weights)
    write_config(copy, config)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        Detector.load(copy, backend="torch")


def test_pickle_checkpoint_on_resume(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"epoch": Path("x")}))
    # past the settings check (no checkpoint.json beside this file), the load itself must refuse it
    with pytest.raises(BundleError, match="checkpoint.pt: not a checkpoint of this training .*UnpicklingError"):
        quick_train(data, out, resume=True, allow_changed_settings=True)


@pytest.mark.parametrize("verb", ["predict", "export", "info", "build-engine"])
def test_cli_prints_one_line_for_a_broken_bundle(copy: Path, tmp_path: Path, verb: str) -> None:
    (copy / "config.json").write_text("[]")
    args = {"predict": [str(copy), "x.png", "--out", str(tmp_path / "o")], "export": [str(copy)],
            "info": [str(copy)], "build-engine": [str(copy), "--target", "rtx"]}[verb]
    res = CliRunner().invoke(main, [verb, *args])
    assert res.exit_code == 1 and res.exception is not None and isinstance(res.exception, SystemExit), res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "a JSON list, expected an object" in lines[0]


# ---- defect 8: self-contained and verified -------------------------------------------------------------------
def test_file_linked_from_outside_the_bundle_is_refused(copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "model.onnx", outside)
    os.symlink(outside, copy / "model.onnx")  # same bytes, same checksum, but not in the bundle
    with pytest.raises(BundleError, match="outside the bundle"):
        Detector.load(copy, backend="onnxruntime")


def test_engines_must_be_recorded_with_checksum(copy: Path) -> None:
    from aminet_edge.runtime.backends.tensorrt_backend import find_engine, list_engines

    stray = copy / "engines" / "tensorrt_rtx-rtx-fp16.engine"
    stray.parent.mkdir()
    stray.write_bytes(b"an engine nobody recorded")
    assert list_engines(copy) == []  # never found by glob
    with pytest.raises(EngineError, match="no TensorRT engine recorded"):
        find_engine(copy, read_config(copy))
    with pytest.raises(EngineError, match="is not recorded in .*config.json"):
        find_engine(copy, read_config(copy), engine=stray)
    assert "not recorded" in verify_bundle(copy)["engines/tensorrt_rtx-rtx-fp16.engine"]
    from aminet_edge.export.engine import build_engine

    with pytest.raises(BundleError, match="outside the bundle"):  # refused before any build
        build_engine(copy, target="rtx", out=copy.parent / "x.engine")


def test_swapped_and_nan_weights_are_detected(copy: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from aminet_edge.model.pipeline import load_pipeline

    weights = copy / "weights.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.startswith("aminet.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights))  # another model's weights under the same name
    with pytest.raises(BundleError, match="weights file's sha256 differs|weights file is .* bytes"):
        Detector.load(copy, backend="torch")
    tensors[name][..., 0] = float("nan")
    save_file(tensors, str(weights))
    config = read_config(copy)
    config.artifacts["weights"] = make_record(copy, weights)  # recorded with its NaN (a diverged run)
    write_config(copy, config)
    with pytest.raises(BundleError, match=f"weights {name} hold NaN or infinite values"):
        load_pipeline(copy)
    from aminet_edge.model.pipeline import build_modules, save_pipeline_weights

    extractor, aminet = build_modules(config)
    with torch.no_grad():
        next(aminet.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_pipeline_weights(tmp_path / "new", extractor, aminet)


# ---- 11: the real reason a file cannot be read ----------------------------------------------------------------
def test_symlink_loop_is_reported_as_a_loop(copy: Path) -> None:
    (copy / "weights.safetensors").unlink()
    os.symlink("weights.safetensors", copy / "weights.safetensors")
    with pytest.raises(BundleError, match="symbolic link loop"):
        Detector.load(copy, backend="torch")


UNREADABLE = textwrap.dedent("""
    import os, sys
    from aminet_edge.bundle import BundleError, read_config, weights_file
    if os.getuid() == 0:  # root reads everything: drop to nobody (after the imports, which need /root)
        os.setgid(65534)
        os.setuid(65534)
    try:
        weights_file(sys.argv[1], read_config(sys.argv[1]))
    except BundleError as exc:
        print(exc)
""")


def test_unreadable_weights_report_permission_not_missing(copy: Path) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        bundle = Path(shutil.copytree(copy, base / "b"))
        os.chmod(bundle, 0o755)
        os.chmod(bundle / "config.json", 0o644)
        os.chmod(bundle / "weights.safetensors", 0o600 if os.getuid() == 0 else 0o000)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-c", UNREADABLE, str(bundle)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "weights.safetensors: permission denied" in proc.stdout and "No such file" not in proc.stdout
    finally:
        shutil.rmtree(base)


# ---- what to show: verify every checksum, hash once per load ---------------------------------------------------
def test_info_verify_checks_every_file(copy: Path) -> None:
    set_engines(copy, [fake_engine(copy)])
    res = CliRunner().invoke(main, ["info", str(copy), "--verify"])
    assert res.exit_code == 0, res.output
    section = res.output[res.output.index("verify:"):]
    for name in ("weights.safetensors", "model.onnx", "model_a.onnx", "model_b.onnx",
                 "engines/tensorrt_rtx-rtx-fp16.engine"):
        assert f"  {name}: ok" in section
    data = bytearray((copy / "model_b.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model_b.onnx").write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["info", str(copy), "--verify"])
    assert res.exit_code == 1
    assert "model_b.onnx: graph's sha256 differs" in res.output
    assert res.output.strip().splitlines()[-1] == "Error: 1 of 5 bundle file(s) failed verification: model_b.onnx"


@pytest.mark.parametrize("backend, files", [("onnxruntime-split", ["model_a.onnx", "model_b.onnx"]),
                                            ("onnxruntime", ["model.onnx"]),
                                            ("torch", ["weights.safetensors"])])
def test_load_hashes_each_file_it_uses_once(copy: Path, monkeypatch: pytest.MonkeyPatch, backend: str,
                                           files: list[str]) -> None:
    from aminet_edge.runtime.backends import backend_status

    reason = backend_status(backend, copy, read_config(copy), "cpu")
    if reason is not None:
        pytest.skip(reason)
    hashed: list[str] = []
    real = bundle_mod.sha256_file

    def counting(path):  # type: ignore[no-untyped-def]
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(bundle_mod, "sha256_file", counting)
    Detector.load(copy, backend=backend)
    assert sorted(hashed) == files
    Detector.load(copy)  # auto: measures (each candidate checks its own files) unless the copy's cache holds it
    hashed.clear()
    Detector.load(copy)  # auto, measured: the availability checks hash nothing; the chosen backend's files once
    assert len(hashed) == len(set(hashed)) >= 1


# ---- schema 1 bundles (written before checksums) ---------------------------------------------------------------
def make_legacy(bundle: Path) -> None:
    """Rewrite config.json as aminet-edge wrote it before schema 2: no sha256, no weights record."""
    data = json.loads((bundle / "config.json").read_text())
    data["schema_version"] = 1
    data["artifacts"] = {"onnx": {k: {"path": v["path"], "precision": v["precision"], "opset": v["opset"],
                                      "input_size": v["input_size"]} for k, v in data["artifacts"]["onnx"].items()}}
    (bundle / "config.json").write_text(json.dumps(data))


def test_schema1_bundle_weights_load_with_warning_graphs_refused_until_reexport(
        copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    from aminet_edge.export.onnx_export import export_onnx

    make_legacy(copy)
    with pytest.raises(BundleError, match="schema 1 bundle .* re-export the bundle: `aminet-edge export"):
        Detector.load(copy, backend="onnxruntime")
    with caplog.at_level(logging.WARNING, logger="aminet_edge.bundle"):
        det = Detector.load(copy)  # auto: the graphs are skipped, the weights run (torch) with a warning
    assert det.backend == "torch" and "schema 1 bundle: no checksum recorded, weights loaded unverified" in caplog.text
    want = det.predict(generated_images()[0])
    assert verify_bundle(copy)["weights.safetensors"] == "ok"
    export_onnx(copy, "fp32", split=False)  # the upgrade: checksums recorded, schema 2 written
    config = read_config(copy)
    assert config.schema_version == SCHEMA_VERSION and set(config.artifacts) == {"weights", "onnx"}
    assert set(config.artifacts["onnx"]) == {"model"}  # the old unverifiable records are dropped
    got = Detector.load(copy, backend="onnxruntime").predict(generated_images()[0])
    assert np.isclose(got.score, want.score, rtol=1e-4)
