"""Engines: real TensorRT-RTX builds (ahead of time, no GPU) and the standard-TensorRT path under mypy.

What runs here: TensorRT-RTX parses the exported fp32 and fp16 graphs of a tiny bundle (64 px, D=32) and
serializes engines for SM 86 + 89 with a dynamic batch profile (1, 2, 4); the split halves through the
CLI; their records, checksums and the tamper check; the parser's rejection of an unknown node.
What does not run: no engine is deserialized or executed (that needs a GPU), the out-of-memory path
(an AOT build allocates no device memory, so a tiny workspace still builds) and the standard `tensorrt`
builder, which is only type-checked against tensorrt-stubs, never called.
Timing on 2 CPU cores: ~1 s per build (graphs exported once, in the shared fixture), ~4 s for mypy;
nothing here is marked slow.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from aminet_edge.bundle import make_record, read_config, write_config
from aminet_edge.export import trt_compat
from aminet_edge.export.commands import build_engine_cmd
from aminet_edge.export.engine import (EngineMismatchError, GpuRequiredError, OnnxParseError, UnsupportedTargetError,
                                       build_engine, check_engine, serialize_onnx)
from aminet_edge.export.trt_compat import BackendNotInstalledError

ROOT = Path(__file__).resolve().parents[1]
needs_rtx = pytest.mark.skipif(not trt_compat.is_installed("tensorrt_rtx"),
                               reason="tensorrt_rtx not installed (pip install tensorrt-rtx)")


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared exported test bundle (tests/test_export_onnx.py::exported_bundle)."""
    from test_export_onnx import exported_bundle

    return exported_bundle(tmp_path_factory)


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_rtx_engine_builds_and_is_recorded(bundle: Path, precision: str) -> None:
    path = build_engine(bundle, target="rtx", precision=precision, batch=(1, 2, 4), compute_capabilities=[89, 86],
                        workspace=256 << 20)
    assert path == bundle / "engines" / f"tensorrt_rtx-rtx-{precision}.engine" and path.stat().st_size > 100_000
    record = check_engine(bundle, path)
    assert record["builder"] == "tensorrt_rtx" and record["builder_version"] == trt_compat.load_backend(
        "tensorrt_rtx").__version__
    assert record["compute_capabilities"] == [86, 89] and record["precision"] == precision
    assert record["graph"] == "model" and record["onnx"] == ("model.onnx" if precision == "fp32" else "model_fp16.onnx")
    assert record["batch"] == [1, 2, 4] and record["input_size"] == 64 and record["workspace"] == 256 << 20
    assert record["bytes"] == path.stat().st_size and re.fullmatch("[0-9a-f]{64}", record["sha256"])
    assert [e["path"] for e in read_config(bundle).artifacts["engines"]].count(record["path"]) == 1


@needs_rtx
def test_cli_builds_split_engines(bundle: Path) -> None:
    """`build-engine --split`: both halves, recorded with their graph, as the runtime lists them."""
    result = CliRunner().invoke(build_engine_cmd, [str(bundle), "--target", "rtx", "--precision", "fp32", "--arch",
                                                   "86", "--batch", "1", "1", "2", "--workspace-mb", "64", "--split"])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.output.split()]
    assert [p.name for p in paths] == ["tensorrt_rtx-rtx-fp32-model_a.engine", "tensorrt_rtx-rtx-fp32-model_b.engine"]
    records = {r["path"]: r for r in read_config(bundle).artifacts["engines"]}
    assert [records[f"engines/{p.name}"]["graph"] for p in paths] == ["model_a", "model_b"]
    assert records[f"engines/{paths[1].name}"]["workspace"] == 64 << 20
    runtime = pytest.importorskip("aminet_edge.runtime.backends.tensorrt_backend")
    listed = {e.path.name: (e.flavour, e.precision, e.graph) for e in runtime.list_engines(bundle, read_config(bundle))}
    assert listed[paths[0].name] == ("tensorrt_rtx", "fp32", "model_a")


@needs_rtx
def test_rtx_builds_the_guided_graphs(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A bundle with the nearest-normal guide (tests/test_guide_backends.py::guided_graphs): its fp16 single
    graph and model_a (the guide's Gemm, ArgMin, Gather, ReduceL2 and Greater in float32, mask output bool)
    parse and build."""
    pytest.importorskip("torch")
    from test_guide_backends import guided_graphs

    bundle = tmp_path / "guided"
    shutil.copytree(guided_graphs(tmp_path_factory), bundle, ignore=shutil.ignore_patterns("cache"))
    for graph in ("model_a", "model"):
        path = build_engine(bundle, target="rtx", precision="fp16", batch=(1, 1, 2), compute_capabilities=[86],
                            workspace=64 << 20, graph=graph)
        record = check_engine(bundle, path)
        assert (record["graph"], record["onnx"]) == (graph, f"{graph}_fp16.onnx") and path.stat().st_size > 100_000


@needs_rtx
def test_parser_rejection_names_the_node(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="fine"),
             helper.make_node("FancyOp", ["h"], ["y"], name="my_custom_node", domain="com.example")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(OnnxParseError, match=r"bad\.onnx: tensorrt_rtx .* rejected(.|\n)*my_custom_node \(FancyOp\)"):
        serialize_onnx(tmp_path / "bad.onnx", "tensorrt_rtx", compute_capabilities=[86])


@needs_rtx
def test_tampered_engine_fails_check(bundle: Path, tmp_path: Path) -> None:
    path = build_engine(bundle, target="rtx", precision="fp32", batch=(1, 1, 2), compute_capabilities=[86],
                        out=bundle / "engines" / "tampered.engine")
    assert check_engine(bundle, "engines/tampered.engine")["path"] == "engines/tampered.engine"
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
    with pytest.raises(UnsupportedTargetError, match="AMPERE_PLUS"):
        build_engine(bundle, target="rtx", hardware_compatible=True)
    with pytest.raises(ValueError, match="batch profile"):
        build_engine(bundle, target="rtx", batch=(2, 1, 4))


def test_standard_tensorrt_absent_or_needs_gpu(bundle: Path) -> None:
    """Here `import tensorrt` gives an empty namespace package (the stubs): that must count as absent."""
    if trt_compat.is_installed("tensorrt"):
        if trt_compat.gpus():
            pytest.skip("a real TensorRT and GPU are present; the build path is exercised elsewhere")
        with pytest.raises(GpuRequiredError, match="no CUDA GPU"):
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
    """mypy checks aminet_edge/export against tensorrt-stubs 10.13: the Builder, INetworkDefinition, OnnxParser,
    IBuilderConfig, IOptimizationProfile and ITensor calls in engine.serialize_onnx and the typed helpers of
    trt_compat (precision flags, memory pool, hardware compatibility, parser errors). The module objects and
    the TensorRT-RTX-only calls are Any and stay unchecked."""
    pytest.importorskip("mypy")
    stubs = _repaired_stubs(tmp_path / "stubs")
    if stubs is None:
        pytest.skip("tensorrt-stubs not installed (pip install tensorrt-stubs)")
    probe = tmp_path / "probe.py"  # proves the stubs are live: a wrong call must be reported
    probe.write_text("import tensorrt as trt\n\ndef f(b: trt.Builder) -> None:\n    b.create_network('x')\n")
    # torch, onnx and numpy are not on the TensorRT path; skipping them keeps mypy at ~6 s instead of ~35 s
    config = tmp_path / "mypy.ini"
    config.write_text((ROOT / "mypy.ini").read_text() + "\n[mypy-torch.*,onnx.*,numpy.*]\nfollow_imports = skip\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--follow-imports=silent",
           "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    env = {"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd + [str(probe), "aminet_edge/export"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "probe.py:4: error: Argument 1 to \"create_network\"" in run.stdout, run.stdout[-2000:] + run.stderr
    ours = [line for line in run.stdout.splitlines() if line.startswith("aminet_edge/")]
    assert not ours, "\n".join(ours)  # errors inside the (generated) stubs themselves are not ours


@needs_rtx
def test_build_engine_reports_parser_rejection(bundle: Path, tmp_path: Path) -> None:
    """build_engine on a bundle whose model.onnx holds a node TensorRT-RTX does not know."""
    from onnx import TensorProto, helper, save

    shutil.copy(bundle / "config.json", tmp_path / "config.json")
    node = helper.make_node("NoSuchOp", ["images"], ["amap"], name="mystery_node", domain="custom.domain")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("amap", TensorProto.FLOAT, [1, 3, 64, 64])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)]),
         str(tmp_path / "model.onnx"))
    config = read_config(tmp_path)  # recorded as exported (a changed graph is refused before any build)
    config.artifacts["onnx"]["model"].update(make_record(tmp_path, tmp_path / "model.onnx"))
    write_config(tmp_path, config)
    with pytest.raises(OnnxParseError, match="mystery_node"):
        build_engine(tmp_path, target="rtx", precision="fp32", batch=(1, 1, 1), compute_capabilities=[86])
