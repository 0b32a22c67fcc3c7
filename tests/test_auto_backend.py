"""`auto` on CPU (aminet_edge.runtime.backends.auto): measured choice, its cache in the bundle, the key, the table mode.

Nothing here times anything: the measurement is injected (`measure=`, a function giving each candidate's ms
per image) and `time_runs` runs on a fake clock, so every outcome is fixed whatever the machine's load. The
candidates are real backends created on the tiny shared bundle (test_detector.shared_bundle), copied per test
because the cache file is written into the bundle.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from click.testing import CliRunner  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.runtime.backends import auto, backend_status  # noqa: E402

from test_detector import available_cpu_backends, shared_bundle  # noqa: E402

CACHE = auto.CACHE_FILE


@pytest.fixture()
def bundle(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    copy_ = tmp_path / "bundle"
    shutil.copytree(shared_bundle(tmp_path_factory), copy_, ignore=shutil.ignore_patterns("cache"))
    return copy_


@pytest.fixture()
def graph_backends(bundle: Path) -> list[str]:
    """The CPU graph backends that can run here (onnxruntime always; openvino and the split pair if installed)."""
    found = [b for b in available_cpu_backends(bundle) if b != "torch"]
    assert "onnxruntime" in found
    return found


@pytest.fixture()
def one_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only onnxruntime fp32 is timed (quick to create): for the tests of the cache file, not of the choice."""
    monkeypatch.setattr(auto, "candidates", lambda *_, **__: [auto.Candidate("onnxruntime", "fp32")])


class Fake:
    """An injected measurement: ms per image by backend name (default 50), counting its calls."""

    def __init__(self, ms: dict[str, float] | None = None, fail: tuple[str, ...] = ()) -> None:
        self.ms, self.fail, self.calls = ms or {}, fail, []  # type: list[tuple[str, str, float]]

    def __call__(self, backend: Any, images: np.ndarray, seconds: float) -> list[float]:
        self.calls.append((backend.name, backend.precision, seconds))
        assert images.shape[0] == 1 and images.dtype == np.float32
        if backend.name in self.fail:
            raise RuntimeError(f"{backend.name} broke")
        return [self.ms.get(backend.name, 50.0)] * 3


def never(*_: Any) -> list[float]:
    raise AssertionError("measured although a cached choice exists")


def choose(bundle: Path, measure: Any, **options: Any) -> tuple[Any, str]:
    instance, reason = auto.choose_backend(bundle, read_config(bundle), "cpu", options, measure=measure)
    instance.close()
    return instance, reason


# ---- the timer ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Sleeper:
    """A backend whose run takes `ms` on `clock`."""

    name, precision = "fake", "fp32"

    def __init__(self, clock: Clock, ms: float) -> None:
        self.clock, self.ms, self.runs = clock, ms, 0

    def run(self, images: np.ndarray) -> None:
        self.runs += 1
        self.clock.t += self.ms / 1e3


@pytest.mark.parametrize("seconds, timed", [(0.0, 1), (0.025, 3), (10.0, auto.MAX_RUNS)])
def test_time_runs_warms_up_then_times_within_its_share(seconds: float, timed: int) -> None:
    clock = Clock()
    backend = Sleeper(clock, 10.0)
    times = auto.time_runs(backend, np.zeros((2, 3, 8, 8), np.float32), seconds, clock)  # type: ignore[arg-type]
    assert backend.runs == timed + 1  # one untimed warm-up
    assert times == pytest.approx([5.0] * timed)  # 10 ms per batch of 2


# ---- candidates ---------------------------------------------------------------------------------------
def test_candidates_are_fp32_and_validated_int8_only(bundle: Path, graph_backends: list[str]) -> None:
    config = read_config(bundle)
    assert [(c.backend, c.precision) for c in auto.candidates(bundle, config)] == [(b, "fp32") for b in graph_backends]
    onnx = config.artifacts["onnx"]
    onnx["model_int8"] = {**onnx["model"], "path": "model_int8.onnx", "precision": "int8"}
    assert ("onnxruntime", "int8") not in [(c.backend, c.precision) for c in auto.candidates(bundle, config)]
    onnx["model_int8"]["validation"] = {"accepted": False, "mask_tokens_changed": 0.012}
    assert ("onnxruntime", "int8") not in [(c.backend, c.precision) for c in auto.candidates(bundle, config)]
    onnx["model_int8"]["validation"] = {"accepted": True, "mask_tokens_changed": 0.001}
    found = [(c.backend, c.precision) for c in auto.candidates(bundle, config)]
    assert found.index(("onnxruntime", "int8")) == found.index(("onnxruntime", "fp32")) + 1
    assert ("onnxruntime-split", "int8") not in found  # model_b_int8 is not recorded
    # bf16 only when asked for, and then only where the backend has it
    asked = [(c.backend, c.precision) for c in auto.candidates(bundle, read_config(bundle), "bf16")]
    assert asked == [(b, "bf16") for b in graph_backends if b.startswith("openvino")]


# ---- the choice and its cache ---------------------------------------------------------------------------
def test_fastest_measured_candidate_is_chosen_and_kept(bundle: Path, graph_backends: list[str]) -> None:
    fastest = graph_backends[-1]  # the table's last: the measurement, not the table, decides
    fake = Fake({fastest: 5.0, "onnxruntime": 8.0})
    instance, reason = choose(bundle, fake)
    assert (instance.name, instance.precision) == (fastest, "fp32")
    assert [c[:2] for c in fake.calls] == [(b, "fp32") for b in graph_backends]  # each once, in table order
    assert reason.startswith(f"auto: measured now: {fastest} fp32, the fastest of {len(graph_backends)}")
    assert "onnxruntime fp32 8.00 ms" in reason
    data = json.loads((bundle / CACHE).read_text())
    assert data["format"] == auto.FORMAT and data["version"] == auto.FORMAT_VERSION
    (entry,) = data["entries"].values()
    assert entry["choice"] == {"backend": fastest, "precision": "fp32"}
    assert {(r["backend"], r["ms_per_image"], r["runs"]) for r in entry["table"]} == \
        {(b, {fastest: 5.0, "onnxruntime": 8.0}.get(b, 50.0), 3) for b in graph_backends}
    assert entry["key"] == auto.cache_key(read_config(bundle), "cpu", {})
    # the next load reads the decision: nothing measured, same backend
    instance, reason = choose(bundle, never)
    assert (instance.name, instance.precision) == (fastest, "fp32")
    assert reason.startswith(f"auto: measured here {entry['measured_at']}: {fastest} fp32") and str(CACHE) in reason
    # Detector.load goes the same way, and a forced backend neither measures nor reads the cache
    det = Detector.load(bundle)
    assert (det.backend, det.precision) == (fastest, "fp32") and det.backend_reason.startswith("auto: measured here")
    assert Detector.load(bundle, backend="onnxruntime").backend_reason == "requested backend='onnxruntime'"


def test_a_key_change_measures_again(bundle: Path, one_candidate: None, monkeypatch: pytest.MonkeyPatch) -> None:
    config = read_config(bundle)
    versions = auto.library_versions()
    choose(bundle, Fake({"onnxruntime": 1.0}))
    assert auto.cached_choice(bundle, config) is not None
    other_graph = copy.deepcopy(config)
    other_graph.artifacts["onnx"]["model"]["sha256"] = "0" * 64  # a re-exported graph
    assert auto.cached_choice(bundle, other_graph) is None
    assert auto.cached_choice(bundle, config, options={"threads": 1}) is None
    for name, value in [("cpu_model", lambda: "Some Other CPU"), ("usable_cores", lambda: 64),
                        ("library_versions", lambda: {**versions, "onnxruntime": "9.9.9"})]:
        with monkeypatch.context() as m:
            m.setattr(auto, name, value)
            assert auto.cached_choice(bundle, config) is None, name
            fake = Fake({"onnxruntime": 2.0})
            choose(bundle, fake)
            assert fake.calls, f"{name} changed but nothing was measured"
        assert auto.cached_choice(bundle, config) is not None  # the first key's entry is kept beside it
    assert len(json.loads((bundle / CACHE).read_text())["entries"]) == 4


def test_budget_is_shared_among_candidates(bundle: Path, graph_backends: list[str]) -> None:
    clock = Clock()
    shares: list[float] = []

    def measure(backend: Any, images: np.ndarray, seconds: float) -> list[float]:
        shares.append(seconds)
        clock.t += 3.0 if len(shares) == 1 else seconds  # the first overruns the whole budget
        return [10.0]

    config = read_config(bundle)
    choice, instance = auto.measure_choice(bundle, config, auto.candidates(bundle, config), {}, measure, clock, 2.0)
    instance.close()
    assert shares[0] == pytest.approx(2.0 / len(graph_backends))
    assert shares[1:] == [0.0] * (len(graph_backends) - 1)  # spent: the others get their minimum run only
    assert [r.runs for r in choice.table] == [1] * len(graph_backends)


def test_failed_candidates_are_reported_and_skipped(bundle: Path, graph_backends: list[str]) -> None:
    fake = Fake({"onnxruntime": 1.0}, fail=("onnxruntime",))
    instance, reason = choose(bundle, fake)
    assert instance.name != "onnxruntime" and "onnxruntime fp32 failed (RuntimeError: onnxruntime broke)" in reason
    everything = Fake(fail=tuple(graph_backends))
    instance, reason = choose(bundle, everything, threads=1)  # another key: measured again, all fail
    assert instance.name == graph_backends[0]  # the table's pick
    assert reason.startswith("auto (every measured candidate failed:")


@pytest.mark.parametrize("content", [
    b"\x80\x04not json at all", pickle.dumps({"format": auto.FORMAT}), b'{"format": "someone else\'s"}',
    json.dumps({"format": auto.FORMAT, "version": 99, "entries": {}}).encode(),
    json.dumps({"format": auto.FORMAT, "version": auto.FORMAT_VERSION, "entries": []}).encode(), b"[1, 2]"],
    ids=["binary", "pickle", "foreign", "newer-version", "bad-entries", "list"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_a_warning(
        bundle: Path, one_candidate: None, content: bytes, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_unpickling(*_: Any, **__: Any) -> None:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    (bundle / CACHE).parent.mkdir(parents=True, exist_ok=True)
    (bundle / CACHE).write_bytes(content)
    fake = Fake({"onnxruntime": 1.0})
    with caplog.at_level(logging.WARNING, logger="aminet_edge.runtime"):
        instance, _ = choose(bundle, fake)
    assert instance.name == "onnxruntime" and fake.calls
    assert f"ignored {bundle / CACHE}: " in caplog.text and "measuring the backends again" in caplog.text
    assert json.loads((bundle / CACHE).read_text())["format"] == auto.FORMAT  # replaced by a valid one


def test_a_malformed_entry_is_ignored(bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = read_config(bundle)
    digest = auto.key_digest(auto.cache_key(config, "cpu", {}))
    (bundle / CACHE).parent.mkdir(parents=True, exist_ok=True)
    (bundle / CACHE).write_text(json.dumps({"format": auto.FORMAT, "version": auto.FORMAT_VERSION,
                                            "entries": {digest: {"choice": "torch"}}}))
    with caplog.at_level(logging.WARNING, logger="aminet_edge.runtime"):
        assert auto.cached_choice(bundle, config) is None
    assert "ignored a malformed entry" in caplog.text


def test_a_cached_choice_that_is_no_candidate_now_measures_again(bundle: Path, one_candidate: None) -> None:
    choose(bundle, Fake({"onnxruntime": 1.0}))
    data = json.loads((bundle / CACHE).read_text())
    for entry in data["entries"].values():
        entry["choice"] = {"backend": "torch", "precision": "fp32"}  # edited, or the backend since uninstalled
    (bundle / CACHE).write_text(json.dumps(data))
    fake = Fake({"onnxruntime": 1.0})
    assert choose(bundle, fake)[0].name == "onnxruntime" and fake.calls


def test_cache_file_is_written_atomically(bundle: Path, one_candidate: None, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else "?"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    choose(bundle, Fake({"onnxruntime": 1.0}))
    target = bundle / CACHE
    (kind, synced), (kind2, moved), *after = events
    assert after in ([], [("fsync", "?")], [("fsync", str(target.parent.resolve()))])  # the folder, once renamed
    tmp = moved.split(" -> ")[0]
    assert (kind, kind2) == ("fsync", "replace") and moved.endswith(f" -> {target}")
    assert Path(tmp).parent == target.parent and Path(tmp).name != target.name  # a temporary beside it
    assert synced in ("?", str(Path(tmp).resolve()))  # the temporary was fsynced before the rename
    before = target.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", crash)
    with caplog.at_level(logging.WARNING, logger="aminet_edge.runtime"):
        instance, _ = choose(bundle, Fake({"onnxruntime": 1.0}), threads=1)  # a new key: written again
    assert instance.name == "onnxruntime" and "cannot keep auto's measured choice" in caplog.text
    assert target.read_bytes() == before  # the old file intact
    assert sorted(p.name for p in target.parent.iterdir() if p.is_file()) == [target.name]  # no temporary left


def test_table_mode_measures_nothing(bundle: Path, monkeypatch: pytest.MonkeyPatch, graph_backends: list[str]) -> None:
    monkeypatch.setenv(auto.ENV, "table")
    instance, reason = choose(bundle, never)
    assert instance.name == graph_backends[0] and reason.startswith("auto (AMINET_AUTO=table): first available")
    assert not (bundle / CACHE).exists()
    monkeypatch.setenv(auto.ENV, "fastest")
    with pytest.raises(ValueError, match="AMINET_AUTO='fastest': use 'measure'"):
        Detector.load(bundle)


def test_info_shows_the_measured_table(bundle: Path, graph_backends: list[str]) -> None:
    from aminet_edge.cli import main

    before = CliRunner().invoke(main, ["info", str(bundle)])
    assert before.exit_code == 0, before.output
    assert "  auto on cpu: not measured on this machine yet: the first Detector.load times onnxruntime fp32" \
        in before.output or "not measured on this machine yet" in before.output
    assert "auto measured on this cpu:" not in before.output and not (bundle / CACHE).exists()
    fastest = graph_backends[-1]
    choose(bundle, Fake({fastest: 4.0}))
    out = CliRunner().invoke(main, ["info", str(bundle)]).output
    assert f"  auto on cpu: {fastest} fp32: the fastest of {len(graph_backends)} measured at batch 1" in out
    assert "auto measured on this cpu:\n" in out
    assert f"  {fastest} fp32: 4.00 ms/image (median of 3, batch 1) <- chosen" in out
    for other in graph_backends[:-1]:
        assert f"  {other} fp32: 50.00 ms/image (median of 3, batch 1)\n" in out
    assert f"  valid for: {auto.cpu_model()} ({auto.usable_cores()} cores" in out and "any change measures again" in out


def test_without_graphs_the_table_fallback_runs(bundle: Path) -> None:
    config = read_config(bundle)
    for part in ("model", "model_a", "model_b"):
        (bundle / f"{part}.onnx").unlink()
    assert auto.candidates(bundle, config) == []
    instance, reason = choose(bundle, never)
    assert instance.name == "torch" and reason.startswith("auto (no graph backend to measure)")
    assert backend_status("onnxruntime", bundle, config) is not None
