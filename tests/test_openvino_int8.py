"""OpenVINO's int8 graph (model_int8_static.onnx): export, bundle records and refusals, accuracy vs fp32.

The bundle is a copy of test_detector's tiny bundle (random weights), exported by the CLI with
`--precision int8 --calibration-data` on generated normal images. Tolerances against the fp32
onnxruntime path, measured on these inputs (6 generated images, 64 px, 256 tokens each), and why:
- token masks identical: the int8 graph quantises only the inpainting branch, the mask is computed by
  the fp32 backbone and clustering branch (OpenVINO fp32 equals onnxruntime fp32 on these inputs);
- image scores within rtol 2 % (measured <= 0.92 %), maps within 0.8 % of their maximum (measured
  <= 0.39 %) and correlated >= 0.998 (measured >= 0.9995): int8 inpainting carries ~0.5 % error into
  the reconstruction the map is measured against.
Without 7-bit weights (quantize_static's overflow fix) this CPU (AVX2, no VNNI) saturated: scores moved by
up to 3.4 %, maps by 1.8 % with correlation 0.95; these bounds catch that. On trained bundles and real
data: bench/openvino_accuracy.py (BENCHMARKS.md, "OpenVINO on CPU: precision and accuracy").
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built and exported with torch
pytest.importorskip("openvino", reason="openvino is not installed (pip install 'aminet-edge[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'aminet-edge[openvino]')")

from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge.bundle import BundleError, make_record, read_config, sha256_file, verify_bundle, write_config  # noqa: E402
from aminet_edge.export.node_names import in_inpainting  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402

SCORE_RTOL = 0.02
MAP_ATOL = 0.008  # times the map's maximum
MIN_MAP_CORRELATION = 0.998


def _save_images(folder: Path, images: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared bundle exported with OpenVINO's int8 graph through the CLI."""
    import warnings

    from click.testing import CliRunner

    from aminet_edge.cli import main

    root = tmp_path_factory.mktemp("ov-int8")
    bundle = root / "bundle"
    shutil.copytree(shared_bundle(tmp_path_factory), bundle, ignore=shutil.ignore_patterns("cache"))
    normal = _save_images(root / "normal", generated_images(12, seed=5))  # not the images compared below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        result = CliRunner().invoke(main, ["export", str(bundle), "--precision", "int8", "--no-split",
                                           "--calibration-data", str(normal)])
    assert result.exit_code == 0, result.output
    assert f"model_int8_static: {bundle / 'model_int8_static.onnx'}" in result.output
    return bundle


def test_int8_graph_is_recorded_and_verified(int8_bundle: Path) -> None:
    config = read_config(int8_bundle)
    record = config.artifacts["onnx"]["model_int8_static"]
    digest, size = sha256_file(int8_bundle / "model_int8_static.onnx")
    assert (record["path"], record["sha256"], record["bytes"], record["precision"]) == \
        ("model_int8_static.onnx", digest, size, "int8_static")
    assert record["weights_sha256"] == config.artifacts["weights"]["sha256"]
    report = verify_bundle(int8_bundle)
    assert report["model_int8_static.onnx"] == "ok" and set(report.values()) == {"ok"}


def test_int8_quantises_the_inpainting_branch_only(int8_bundle: Path) -> None:
    """Every convolution and weight MatMul of the inpainting branch reads int8 weights; the backbone, the
    clustering branch, the inpainting head and the score map's blur read none, nor does any node of the
    adaptive mask's statistics."""
    import onnx

    graph = onnx.load(str(int8_bundle / "model_int8_static.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    weights = {i.name for i in graph.initializer}

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    heavy = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")
             or (n.op_type == "MatMul" and (n.input[1] in weights or dequantized(n.input[1])))]
    inpainting = [n.name for n in heavy if in_inpainting(n.name)]
    rest = [n.name for n in heavy if not in_inpainting(n.name)]
    assert len(inpainting) == 1 + 4 * 2 and len(rest) > 30  # embedding + 4 weight MatMuls per block (2 blocks)
    assert [n.name for n in heavy if in_inpainting(n.name) and not dequantized(n.input[1])] == []
    assert [n.name for n in heavy if not in_inpainting(n.name) and dequantized(n.input[1])] == []
    assert any(name.startswith("/extractor/") for name in rest) and any("aggregation" in name for name in rest)
    for node in graph.node:  # nothing of the adaptive mask reads a quantised tensor
        if node.op_type in ("ReduceL2", "ArgMin", "OneHot", "Greater", "Sqrt"):
            assert not any(dequantized(i) for i in node.input), node.name


def test_int8_against_fp32_onnxruntime(int8_bundle: Path) -> None:
    images = generated_images()
    with Detector.load(int8_bundle, backend="openvino", precision="int8", threads=1) as det, \
            Detector.load(int8_bundle, backend="onnxruntime", precision="fp32") as ref:
        assert (det.backend, det.precision) == ("openvino", "int8")
        assert "model_int8_static.onnx" in det.backend_description
        got, want = det.predict(images), ref.predict(images)
        batched = det.predict(images[:1] * 3)  # static scales: a result does not depend on its batch
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.token_mask, w.token_mask)
        assert g.score == pytest.approx(w.score, rel=SCORE_RTOL)
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, rtol=0, atol=MAP_ATOL * float(w.anomaly_map.max()))
        assert np.corrcoef(g.anomaly_map.ravel(), w.anomaly_map.ravel())[0, 1] >= MIN_MAP_CORRELATION
    assert all(b.score == got[0].score for b in batched)


def test_int8_refusals(int8_bundle: Path, shared: Path, tmp_path: Path) -> None:
    # not exported: the error names the command that writes it
    with pytest.raises(BundleError, match=r"model_int8_static.onnx \(OpenVINO's int8 graph\) not found: export "
                                          r"it with `aminet-edge export .* --precision int8 --calibration-data DATA`"):
        Detector.load(shared, backend="openvino", precision="int8")
    with pytest.raises(ValueError, match="openvino-split has no int8 graphs"):
        Detector.load(int8_bundle, backend="openvino-split", precision="int8")
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):  # OpenVINO's graph only
        Detector.load(int8_bundle, backend="onnxruntime", precision="int8_static")
    # a file of that name the bundle does not record is never run
    stray = tmp_path / "stray"
    shutil.copytree(shared, stray, ignore=shutil.ignore_patterns("cache"))
    shutil.copy(int8_bundle / "model_int8_static.onnx", stray / "model_int8_static.onnx")
    with pytest.raises(BundleError, match="lies in the bundle but is not recorded"):
        Detector.load(stray, backend="openvino", precision="int8")
    assert "not recorded" in verify_bundle(stray)["model_int8_static.onnx"]
    # changed after export: refused by its checksum
    edited = tmp_path / "edited"
    shutil.copytree(int8_bundle, edited, ignore=shutil.ignore_patterns("cache"))
    with open(edited / "model_int8_static.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="is .* bytes, .* were recorded"):
        Detector.load(edited, backend="openvino", precision="int8")
    # made from other weights (the bundle retrained since): refused even with a matching checksum
    config = read_config(edited)
    record = config.artifacts["onnx"]["model_int8_static"]
    record.update(make_record(edited, edited / "model_int8_static.onnx"), weights_sha256="0" * 64)
    write_config(edited, config)
    with pytest.raises(BundleError, match="made from other weights"):
        Detector.load(edited, backend="openvino", precision="int8")


def test_export_errors(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aminet_edge.export.onnx_export import export_onnx

    copy = tmp_path / "bundle"
    shutil.copytree(shared, copy, ignore=shutil.ignore_patterns("cache"))
    before = json.loads((copy / "config.json").read_text())
    with pytest.raises(ValueError, match="calibration data is for the int8 export"):
        export_onnx(copy, "fp32", calibration_data=[tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no known data layout"):
        export_onnx(copy, "int8", calibration_data=[tmp_path / "empty"])
    normal = _save_images(tmp_path / "normal", generated_images(2))
    monkeypatch.setitem(sys.modules, "nncf", None)  # nncf not installed
    with pytest.raises(ImportError, match=r"needs nncf \(pip install 'aminet-edge\[openvino\]'\)"):
        export_onnx(copy, "int8", split=False, calibration_data=[normal])
    after = json.loads((copy / "config.json").read_text())
    assert "model_int8_static" not in after["artifacts"]["onnx"]  # nothing recorded for a failed export
    assert before["artifacts"]["weights"] == after["artifacts"]["weights"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


def test_cli_predict_with_int8(int8_bundle: Path, shared: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from aminet_edge.cli import main

    images = _save_images(tmp_path / "images", generated_images(2))
    runner = CliRunner()
    result = runner.invoke(main, ["predict", str(int8_bundle), str(images), "--out", str(tmp_path / "out"),
                                  "--backend", "openvino", "--precision", "int8", "--no-overlays", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    with Detector.load(int8_bundle, backend="openvino", precision="int8") as det:
        want = det.predict_batch(sorted(str(p) for p in images.iterdir()))
    assert [r["score"] for r in rows] == pytest.approx([w.score for w in want], rel=1e-6)
    result = runner.invoke(main, ["predict", str(shared), str(images), "--out", str(tmp_path / "out2"),
                                  "--backend", "openvino", "--precision", "int8", "--quiet"])
    assert result.exit_code != 0 and "--precision int8 --calibration-data DATA" in result.output
