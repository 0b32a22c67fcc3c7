"""`build-engine --target auto|rtx` decides from the GPU present (simulated: the GPU list and the installed
TensorRT flavours are monkeypatched; the decision is what is tested, not a build).

Expected, by machine: no GPU -> TensorRT-RTX ahead of time; an RTX-targetable GPU (SM 80/86/89/120/121)
-> TensorRT-RTX, its SM included in the default list; a GPU TensorRT-RTX does not target (H200, SM 90)
-> standard TensorRT when installed, else refused with what to do; a Jetson -> JetPack's TensorRT;
`--target rtx` on an SM 90 machine builds (for other machines) with a warning.
"""

from __future__ import annotations

import pytest

from aminet_edge.export import engine, trt_compat
from aminet_edge.export.engine import UnsupportedTargetError
from aminet_edge.export.trt_compat import BackendNotInstalledError

H200 = ("NVIDIA H200", 90)
RTX4090 = ("NVIDIA GeForce RTX 4090", 89)
GB10 = ("NVIDIA GB10", 121)


def machine(monkeypatch: pytest.MonkeyPatch, gpus: list[tuple[str, int]], installed: set[str],
            jetson: bool = False) -> None:
    monkeypatch.setattr(trt_compat, "gpus", lambda: list(gpus))
    monkeypatch.setattr(trt_compat, "is_installed", lambda name: name in installed)
    monkeypatch.setattr(trt_compat, "is_jetson", lambda: jetson)


@pytest.mark.parametrize("gpus, installed, jetson, want", [
    ([], {"tensorrt_rtx"}, False, ("tensorrt_rtx", "rtx")),
    ([RTX4090], {"tensorrt_rtx"}, False, ("tensorrt_rtx", "rtx")),
    ([RTX4090], {"tensorrt_rtx", "tensorrt"}, False, ("tensorrt_rtx", "rtx")),
    ([H200], {"tensorrt_rtx", "tensorrt"}, False, ("tensorrt", "gpu")),
    ([H200], {"tensorrt"}, False, ("tensorrt", "gpu")),
    ([("Orin", 87)], {"tensorrt"}, True, ("tensorrt", "jetson")),
    ([("Orin", 87)], {"tensorrt", "tensorrt_rtx"}, True, ("tensorrt", "jetson")),
], ids=["no-gpu", "rtx4090", "rtx4090-both", "h200-both", "h200-trt", "jetson", "jetson-both"])
def test_auto_picks_from_the_gpu_present(monkeypatch: pytest.MonkeyPatch, gpus: list, installed: set,  # type: ignore[type-arg]
                                         jetson: bool, want: tuple[str, str]) -> None:
    machine(monkeypatch, gpus, installed, jetson)
    assert engine._resolve_target("auto") == want


def test_auto_refuses_rtx_on_a_gpu_it_does_not_target(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [H200], {"tensorrt_rtx"})
    with pytest.raises(UnsupportedTargetError) as err:
        engine._resolve_target("auto")
    text = str(err.value)
    for needle in ("NVIDIA H200 (SM 90)", "not a TensorRT-RTX target", "pip install tensorrt", "backend='torch'",
                   "--target rtx"):
        assert needle in text


def test_auto_on_a_jetson_without_tensorrt_names_jetpack(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [("Orin", 87)], {"tensorrt_rtx"}, jetson=True)
    with pytest.raises(BackendNotInstalledError, match="JetPack"):
        engine._resolve_target("auto")
    machine(monkeypatch, [], set())
    with pytest.raises(BackendNotInstalledError, match="no TensorRT flavour installed"):
        engine._resolve_target("auto")


def test_explicit_rtx_on_sm90_warns_but_builds_for_other_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [H200], {"tensorrt_rtx"})
    with pytest.warns(UserWarning, match=r"NVIDIA H200 \(SM 90\).*will not run here"):
        assert engine._resolve_target("rtx") == ("tensorrt_rtx", "rtx")
    machine(monkeypatch, [RTX4090], {"tensorrt_rtx"})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine._resolve_target("rtx") == ("tensorrt_rtx", "rtx")


def test_rtx_default_list_includes_the_gpu_present(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, [GB10], {"tensorrt_rtx"})
    assert engine._compute_capabilities("tensorrt_rtx", "rtx", None) == [80, 86, 89, 120, 121]
    assert engine._compute_capabilities("tensorrt_rtx", "rtx", [86]) == [86]  # explicit --arch wins
    machine(monkeypatch, [H200], {"tensorrt_rtx"})
    assert engine._compute_capabilities("tensorrt_rtx", "rtx", None) == list(engine.DEFAULT_RTX_SMS)


def test_cli_prints_the_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from aminet_edge.export.commands import build_engine_cmd

    machine(monkeypatch, [H200], {"tensorrt_rtx"})
    result = CliRunner().invoke(build_engine_cmd, [str(tmp_path), "--target", "auto"])
    assert result.exit_code != 0 and "not a TensorRT-RTX target" in result.output
    assert "Traceback" not in result.output
