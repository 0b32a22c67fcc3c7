"""Engines: a real TensorRT-RTX build (ahead of time, no GPU) and the standard-TensorRT path under mypy.

What runs here: TensorRT-RTX parses the exported fp32 and fp16 graphs of a tiny bundle and serializes
engines for SM 86 and 89 with a dynamic batch profile (1, 2, 4); their record, checksum and tamper
check. What does not run: no engine is deserialized or executed (that needs a GPU), and the standard
`tensorrt` builder is only type-checked against tensorrt-stubs, never called.
The two builds take ~3 s together on 2 CPU cores, so they are not marked slow.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from aminet_edge.bundle import read_config
from aminet_edge.export import trt_compat
from aminet_edge.export.engine import (EngineMismatchError, GpuRequiredError, UnsupportedTargetError, build_engine,
                                       check_engine)
from aminet_edge.export.trt_compat import BackendNotInstalledError

ROOT = Path(__file__).resolve().parents[1]
needs_rtx = pytest.mark.skipif(not trt_compat.is_installed("tensorrt_rtx"),
                               reason="tensorrt_rtx not installed (pip install tensorrt-rtx)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_export_onnx import make_bundle

    return make_bundle(tmp_path_factory.mktemp("engine"))


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_engine_builds_and_is_recorded(bundle: Path, precision: str) -> None:
    path = build_engine(bundle, target="rtx", precision=precision, batch=(1, 2, 4), compute_capabilities=[89, 86])
    assert path == bundle / "engines" / f"tensorrt_rtx-rtx-{precision}.engine" and path.stat().st_size > 100_000
    record = check_engine(bundle, path)
    assert record["builder"] == "tensorrt_rtx" and record["builder_version"] == trt_compat.load_backend(
        "tensorrt_rtx").__version__
    assert record["compute_capabilities"] == [86, 89] and record["precision"] == precision
    assert record["batch"] == [1, 2, 4] and record["input_size"] == 64 and record["onnx"].startswith("model")
    assert [e["path"] for e in read_config(bundle).artifacts["engines"]].count(record["path"]) == 1


@needs_rtx
def test_tampered_engine_fails_check(bundle: Path, tmp_path: Path) -> None:
    path = build_engine(bundle, target="rtx", precision="fp32", batch=(1, 1, 2), compute_capabilities=[86],
                        out=bundle / "engines" / "tampered.engine")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match=r"sha256 differs(.|\n)*aminet-edge build-engine .* --target rtx"):
        check_engine(bundle, path)
    with pytest.raises(EngineMismatchError, match="not recorded"):
        check_engine(bundle, tmp_path / "other.engine")


@needs_rtx
def test_rtx_rejects_turing_and_unknown_targets(bundle: Path) -> None:
    with pytest.raises(UnsupportedTargetError, match="75 \\(Turing\\)"):
        build_engine(bundle, target="rtx", compute_capabilities=[75, 86])
    with pytest.raises(UnsupportedTargetError, match="compute capability \\[70\\]"):
        build_engine(bundle, target="rtx", compute_capabilities=[70])
    with pytest.raises(UnsupportedTargetError, match="target must be one of"):
        build_engine(bundle, target="xavier")


def test_standard_tensorrt_absent_or_needs_gpu(bundle: Path) -> None:
    """Here `import tensorrt` gives an empty namespace package (the stubs): that must count as absent."""
    if trt_compat.is_installed("tensorrt"):
        if trt_compat.gpus():
            pytest.skip("a real TensorRT and GPU are present; the build path is exercised elsewhere")
        with pytest.raises(GpuRequiredError, match="needs|no CUDA GPU"):
            build_engine(bundle, target="jetson")
    else:
        with pytest.raises(BackendNotInstalledError, match="JetPack"):
            build_engine(bundle, target="jetson")


def _repaired_stubs(dest: Path) -> Path | None:
    """Copy tensorrt-stubs' .pyi files to dest, repairing their syntax errors (parameters named `in`/`out`,
    required parameters after defaulted ones). None when the stubs are not installed."""
    site = Path(sysconfig.get_paths()["purelib"])
    init, bindings = site / "tensorrt" / "__init__.pyi", site / "tensorrt_bindings" / "tensorrt.pyi"
    if not (init.is_file() and bindings.is_file()):
        return None
    (dest / "tensorrt").mkdir(parents=True)
    (dest / "tensorrt_bindings").mkdir()
    shutil.copy(init, dest / "tensorrt" / "__init__.pyi")
    shutil.copy(site / "tensorrt_bindings" / "__init__.pyi", dest / "tensorrt_bindings" / "__init__.pyi")
    lines = []
    for line in bindings.read_text().splitlines():
        m = re.match(r"(\s*def \w+\()(.*)(\) -> .*)$", line)
        if m:
            params, seen = [], False
            for p in re.sub(r"\b(in|out)\b:", r"\1_:", m.group(2)).split(", "):
                seen = seen or "=" in p
                params.append(p + " = ..." if seen and "=" not in p and ":" in p and not p.startswith("*") else p)
            line = m.group(1) + ", ".join(params) + m.group(3)
        lines.append(line)
    (dest / "tensorrt_bindings" / "tensorrt.pyi").write_text("\n".join(lines) + "\n")
    return dest


def test_standard_tensorrt_path_typechecks(tmp_path: Path) -> None:
    """mypy checks aminet_edge/export (builder, network, parser, config, profile calls) against tensorrt-stubs."""
    pytest.importorskip("mypy")
    stubs = _repaired_stubs(tmp_path / "stubs")
    if stubs is None:
        pytest.skip("tensorrt-stubs not installed (pip install tensorrt-stubs)")
    probe = tmp_path / "probe.py"  # proves the stubs are live: a wrong call must be reported
    probe.write_text("import tensorrt as trt\n\ndef f(b: trt.Builder) -> None:\n    b.create_network('x')\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), "--follow-imports=silent",
           "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    env = {"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd + [str(probe), "aminet_edge/export"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "probe.py:4: error: Argument 1 to \"create_network\"" in run.stdout, run.stdout[-2000:] + run.stderr
    ours = [line for line in run.stdout.splitlines() if line.startswith("aminet_edge/")]
    assert not ours, "\n".join(ours)  # errors inside the (generated) stubs themselves are not ours


@needs_rtx
def test_parser_rejection_names_the_node(bundle: Path, tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    from aminet_edge.export.engine import OnnxParseError

    shutil.copy(bundle / "config.json", tmp_path / "config.json")
    node = helper.make_node("NoSuchOp", ["images"], ["amap"], name="mystery_node", domain="custom.domain")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("amap", TensorProto.FLOAT, [1, 3, 64, 64])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)]),
         str(tmp_path / "model.onnx"))
    with pytest.raises(OnnxParseError, match="mystery_node"):
        build_engine(tmp_path, target="rtx", precision="fp32", batch=(1, 1, 1), compute_capabilities=[86])
