"""Inspection station: config validation, the per-camera pipeline against Detector.predict, the result store,
the NG archive's retention, back-pressure, sources (folder, video, software trigger), SIGTERM, restart.

The outputs with real servers (MQTT broker, OPC UA client, Modbus client, HTTP server) are in
tests/test_station_outputs.py. Nothing here waits on a clock: every wait polls a condition with a deadline,
and faults (a slow model, a bad image) are injected.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")  # the shared bundle is built with torch

from test_detector import generated_images, shared_bundle  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.station import EXAMPLE_CONFIG, Station, StationConfigError, load_config  # noqa: E402
from aminet_edge.station.store import ResultStore  # noqa: E402

DEADLINE_S = 60.0


def wait_for(condition: Any, what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll `condition()` until truthy (returned) or fail after `timeout` s (a generous bound, not a timing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return generated_images(6)


@pytest.fixture(scope="module")
def detector(bundle: Path, images: list[np.ndarray]) -> Iterator[Detector]:
    """A Detector whose raw threshold sits between the generated images' scores (both OK and NG occur)."""
    probe = Detector.load(bundle, backend="onnxruntime", batch_size=1)
    scores = sorted(r.score for r in probe.predict_batch(images))
    probe.close()
    det = Detector.load(bundle, backend="onnxruntime", batch_size=1, threshold=(scores[2] + scores[3]) / 2)
    yield det
    det.close()


def write_images(folder: Path, images: list[np.ndarray], names: list[str] | None = None) -> list[Path]:
    """PNGs written atomically (temp name, rename) so a watcher never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / (names[i] if names else f"part_{i:03d}.png")
        Image.fromarray(img).save(folder / f".tmp_{path.name}", format="PNG")
        os.replace(folder / f".tmp_{path.name}", path)
        paths.append(path)
    return paths


def stored(store: Path) -> list[dict[str, Any]]:
    db = ResultStore(store)
    try:
        return list(db.query())
    finally:
        db.close()


def toml_config(tmp: Path, cameras: str, station: str = "", outputs: str = "") -> Path:
    path = tmp / "station.toml"
    path.write_text(f"[station]\nstore = \"st/results.db\"\narchive = \"st/archive\"\noutbox = \"st/outbox\"\n"
                    f"flush_timeout = 20\n{station}\n{outputs}\n{cameras}")
    return path


def folder_camera(name: str, bundle: Path, folder: Path, extra: str = "") -> str:
    return (f"[[cameras]]\nname = \"{name}\"\nbundle = \"{bundle}\"\n{extra}\n"
            f"[cameras.source]\ntype = \"folder\"\npath = \"{folder}\"\npattern = \"*.png\"\nsettle = 0\n")


# ---- config ---------------------------------------------------------------------------------------
def test_example_config_parses_and_the_cli_prints_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "aminet_edge", "station", "--example-config"], capture_output=True,
                         text=True, check=True).stdout
    assert out == EXAMPLE_CONFIG
    (tmp_path / "ex.toml").write_text(out)
    cfg = load_config(tmp_path / "ex.toml", check_paths=False)
    assert [c.name for c in cfg.cameras] == ["top", "side", "line"]
    assert cfg.cameras[0].outputs == ("mqtt", "webhook", "opcua", "modbus")  # default: every configured output
    assert cfg.cameras[1].outputs == ("opcua", "mqtt") and cfg.cameras[1].trigger == "software"
    line = cfg.cameras[2]
    assert (line.trigger, line.trigger_line, line.trigger_activation, line.source.type) == (
        "hardware", "Line0", "RisingEdge", "genicam")
    assert cfg.store == tmp_path / "station/results.db" and cfg.archive_max_bytes == 2048 << 20


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('type = "video"', 'type = "camera"'), "cameras[1].source.type: must be one of"),
    (lambda s: s.replace('path = "side.mp4"', 'path = 3'), "cameras[1].source.path: must be a string"),
    (lambda s: s.replace('name = "side"', 'name = "top"'), "cameras[1].name: 'top' is used twice"),
    (lambda s: s.replace('name = "side"', 'name = "side cam"'), "cameras[1].name: may hold letters"),
    (lambda s: s.replace('sensitivity = 0.5', 'sensitivity = 1.5'), "cameras[0].sensitivity: must be in [0.0, 1.0]"),
    (lambda s: s.replace('outputs = ["opcua", "mqtt"]', 'outputs = ["plc"]'), "cameras[1].outputs[0]: 'plc' is not"),
    (lambda s: s.replace('backpressure = "block"', 'backpressur = "block"'), "cameras[0].backpressur: unknown key"),
    (lambda s: s.replace('port = 1883', 'port = "1883"'), "outputs.mqtt.port: must be an integer"),
    (lambda s: s.replace('topic = "aminet/{camera}/result"', 'topic = "aminet"'), "outputs.mqtt.topic: must contain"),
    (lambda s: s.replace('archive_ng = true', 'archive_ng = 1'), "cameras[0].archive_ng: must be true or false"),
    (lambda s: s.replace('bundle = "runs/bottle"\ntrigger', 'trigger'), "cameras[1].bundle: give exactly one"),
    (lambda s: s.replace('[station]', '[station]\nstore = [1]'), "not valid TOML"),
    (lambda s: s.replace('type = "genicam"', 'type = "stream"'), "cameras[2].trigger: \"hardware\" needs a genicam"),
    (lambda s: s.replace('trigger_line = "Line0"', ''), "cameras[2].trigger_line: missing (required with"),
    (lambda s: s.replace('trigger_line = "Line0"', 'trigger_line = "Software"'), "cameras[2].trigger_line: must name"),
    (lambda s: s.replace('"RisingEdge"', '"AnyEdge"'), "cameras[2].trigger_activation: must be one of"),
    (lambda s: s.replace('trigger = "software"', 'trigger = "software"\ntrigger_line = "Line0"'),
     "cameras[1].trigger_line: only for trigger = \"hardware\""),
])
def test_config_errors_name_the_key(tmp_path: Path, edit: Any, message: str) -> None:
    path = tmp_path / "bad.toml"
    text = edit(EXAMPLE_CONFIG)
    assert text != EXAMPLE_CONFIG
    path.write_text(text)
    with pytest.raises(StationConfigError, match=None) as info:
        load_config(path, check_paths=False)
    assert str(info.value).startswith(str(path)) and message in str(info.value), str(info.value)


def test_config_checks_paths(tmp_path: Path) -> None:
    path = toml_config(tmp_path, folder_camera("a", tmp_path / "nobundle", tmp_path / "in"))
    with pytest.raises(StationConfigError, match=r"cameras\[0\]\.bundle: .*not a bundle"):
        load_config(path)
    (tmp_path / "nobundle").mkdir()
    (tmp_path / "nobundle" / "config.json").write_text("{}")
    with pytest.raises(StationConfigError, match=r"cameras\[0\]\.source\.path: .* is not a folder"):
        load_config(path)


# ---- the pipeline against Detector.predict --------------------------------------------------------
def test_folder_camera_results_match_detector_and_are_stored(tmp_path: Path, bundle: Path, detector: Detector,
                                                             images: list[np.ndarray]) -> None:
    """Every image of a watched folder is inspected once: the stored score and decision are
    Detector.predict's on the same file; NG images are archived with their overlay; an unreadable file
    gives an ERROR row and the camera goes on; `station results` reads it back as CSV."""
    inbox = tmp_path / "inbox"
    paths = write_images(inbox, images)
    (inbox / "zz_broken.png").write_bytes(b"\x89PNG not really")
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox)))
    with Station(cfg, detectors={"top": detector}) as station:
        wait_for(lambda: sum(station.state()["cameras"]["top"]["counts"].values()) == 7, "7 results")
        n_ng = station.state()["cameras"]["top"]["counts"]["NG"]
        wait_for(lambda: station.state()["archive"]["files"] == 2 * n_ng, "the NG images archived")
        state = station.state()
    rows = stored(cfg.store)
    by_ref = {r["ref"]: r for r in rows}
    assert len(rows) == 7 and set(by_ref) == {str(p) for p in paths} | {str(inbox / "zz_broken.png")}
    want = detector.predict_batch([str(p) for p in paths])
    sha = detector.config.artifacts["weights"]["sha256"]
    for path, ref in zip(paths, want):
        row = by_ref[str(path)]
        assert row["score"] == ref.score and row["normalized"] == ref.normalized_score
        assert row["decision"] == ("NG" if ref.is_anomaly else "OK")
        assert row["part_id"] == path.stem and row["camera"] == "top" and row["origin"] == "free-run"
        assert row["weights_sha256"] == sha and row["backend"] == detector.backend and row["latency_ms"] >= 0
        if ref.is_anomaly:
            image = Path(row["image_path"])
            assert image.parent.parent == cfg.archive / "top"
            np.testing.assert_array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(path)))
            w, h = Image.open(path).size
            assert Image.open(image.with_name(image.stem + "_overlay.png")).size == (3 * w, h)  # 3 panels
        else:
            assert row["image_path"] is None
    broken = by_ref[str(inbox / "zz_broken.png")]
    assert broken["decision"] == "ERROR" and "zz_broken.png" in broken["error"] and broken["score"] is None
    n_ng = sum(r.is_anomaly for r in want)
    assert 0 < n_ng < 6
    assert state["cameras"]["top"]["counts"] == {"OK": 6 - n_ng, "NG": n_ng, "ERROR": 1}
    assert state["archive"]["files"] == 2 * n_ng
    assert state["cameras"]["top"]["last"]["id"] == max(r["id"] for r in rows)

    out = subprocess.run([sys.executable, "-m", "aminet_edge", "station", "results", str(cfg.source),
                          "--camera", "top", "--csv"], capture_output=True, text=True, check=True).stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["id"]) for r in table] == [r["id"] for r in rows]
    assert [float(r["score"]) if r["score"] else None for r in table] == [r["score"] for r in rows]
    later = subprocess.run([sys.executable, "-m", "aminet_edge", "station", "results", str(cfg.store),
                            "--since", str(rows[-1]["time"])], capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["id"] for line in later.splitlines()] == [r["id"] for r in rows
                                                                       if r["time"] >= rows[-1]["time"]]
    none = subprocess.run([sys.executable, "-m", "aminet_edge", "station", "results", str(cfg.store),
                           "--camera", "other", "--csv"], capture_output=True, text=True, check=True).stdout
    assert none.splitlines() == [out.splitlines()[0]]


def test_restart_resumes_from_the_store(tmp_path: Path, bundle: Path, detector: Detector,
                                        images: list[np.ndarray]) -> None:
    inbox = tmp_path / "inbox"
    write_images(inbox, images[:3])
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox)))
    with Station(cfg, detectors={"top": detector}) as station:
        wait_for(lambda: sum(station.state()["cameras"]["top"]["counts"].values()) == 3, "3 results")
        first = dict(station.state()["cameras"]["top"]["counts"])
    write_images(inbox, images[3:], ["part_100.png", "part_101.png", "part_102.png"])
    station = Station(cfg, detectors={"top": detector})
    assert station.state()["cameras"]["top"]["counts"] == first  # counters resume from the store
    with station:
        wait_for(lambda: sum(station.state()["cameras"]["top"]["counts"].values()) == 6, "6 results")
    rows = stored(cfg.store)
    assert sorted(Path(r["ref"]).name for r in rows) == sorted(p.name for p in inbox.glob("*.png"))  # each once


# ---- archive retention ----------------------------------------------------------------------------
def test_archive_retention_deletes_only_recorded_files_inside_it(tmp_path: Path, bundle: Path,
                                                                 images: list[np.ndarray]) -> None:
    """Every image NG (threshold ~0): the archive keeps the newest 2 files (one image + overlay), deletes
    the rest of what it wrote, and leaves a user's file in the archive folder and a file outside alone."""
    det = Detector.load(bundle, backend="onnxruntime", batch_size=1, threshold=1e-12)
    inbox = tmp_path / "inbox"
    write_images(inbox, images[:4])
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox), "archive_max_files = 2\n"))
    user_file = cfg.archive / "top" / "keep_me.png"
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(b"user data")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not the archive's")
    store = ResultStore(cfg.store)
    store.add_file(0, outside, outside.stat().st_size, main=False)  # a record pointing outside the archive
    store.close()
    with Station(cfg, detectors={"top": det}) as station:
        wait_for(lambda: station.state()["cameras"]["top"]["counts"]["NG"] == 4, "4 NG results")
        wait_for(lambda: station.state()["archive"]["deleted"] == 6, "retention to delete 6 files")
        state = station.state()["archive"]
    det.close()
    rows = stored(cfg.store)
    kept = sorted(p for p in cfg.archive.rglob("*.png") if p != user_file)
    newest = max(rows, key=lambda r: r["id"])
    assert [p.name for p in kept] == [Path(newest["image_path"]).name, Path(newest["image_path"]).stem + "_overlay.png"]
    assert [r["image_path"] is None for r in rows] == [r is not newest for r in rows]
    assert user_file.read_bytes() == b"user data" and outside.read_bytes() == b"not the archive's"
    assert state == {"files": 2, "bytes": sum(p.stat().st_size for p in kept), "deleted": 6, "skipped": 0}


# ---- back-pressure and faults ---------------------------------------------------------------------
class GatedDetector:
    """Wraps a Detector; predict blocks until `gate` is set (an injected slow model)."""

    def __init__(self, detector: Detector) -> None:
        self.detector, self.gate, self.entered = detector, threading.Event(), threading.Event()
        self.backend, self.config = detector.backend, detector.config

    def predict(self, image: Any, bgr: bool = False) -> Any:
        self.entered.set()
        self.gate.wait(DEADLINE_S)
        return self.detector.predict(image, bgr=bgr)


def test_drop_oldest_backpressure_counts_and_records_every_drop(tmp_path: Path, bundle: Path, detector: Detector,
                                                                images: list[np.ndarray]) -> None:
    inbox = tmp_path / "inbox"
    paths = write_images(inbox, images)
    gated = GatedDetector(detector)
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox,
                                                           'queue = 2\nbackpressure = "drop-oldest"')))
    with Station(cfg, detectors={"top": gated}) as station:
        cam = station.state
        # one frame held by the model, the rest either waiting (at most 2) or dropped
        wait_for(lambda: gated.entered.is_set() and cam()["cameras"]["top"]["dropped"]
                 + cam()["cameras"]["top"]["queued"] + 1 == 6, "all frames acquired")
        gated.gate.set()
        wait_for(lambda: sum(cam()["cameras"]["top"]["counts"].values()) == 6, "6 results")
        dropped = cam()["cameras"]["top"]["dropped"]
    rows = stored(cfg.store)
    assert sorted(r["ref"] for r in rows) == sorted(map(str, paths))  # every frame has exactly one result
    drops = [r for r in rows if r["decision"] == "ERROR"]
    assert len(drops) == dropped and dropped in (3, 4)
    assert all("queue was full" in r["error"] for r in drops)
    inspected = sorted(r["ref"] for r in rows if r["decision"] != "ERROR")
    assert inspected[-2:] == [str(p) for p in paths[-2:]]  # the newest frames are the ones kept


def test_blocking_backpressure_loses_nothing(tmp_path: Path, bundle: Path, detector: Detector,
                                             images: list[np.ndarray]) -> None:
    inbox = tmp_path / "inbox"
    write_images(inbox, images)
    gated = GatedDetector(detector)
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox, "queue = 1")))
    with Station(cfg, detectors={"top": gated}) as station:
        wait_for(lambda: gated.entered.is_set() and station.state()["cameras"]["top"]["queued"] == 1, "a full queue")
        assert station.state()["cameras"]["top"]["dropped"] == 0
        gated.gate.set()
        wait_for(lambda: station.state()["cameras"]["top"]["counts"]["ERROR"]
                 + station.state()["cameras"]["top"]["counts"]["OK"]
                 + station.state()["cameras"]["top"]["counts"]["NG"] == 6, "6 results")
    assert all(r["decision"] != "ERROR" for r in stored(cfg.store))


# ---- sources --------------------------------------------------------------------------------------
def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    cv2 = pytest.importorskip("cv2")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_video_file_free_run_and_software_trigger(tmp_path: Path, bundle: Path, detector: Detector,
                                                  images: list[np.ndarray]) -> None:
    """A generated video: free-run inspects every frame in order (the run ends with the file); a
    software-triggered camera on the same file takes one frame per trigger under the trigger's part id,
    and a trigger after the last frame gets an ERROR result (no frame), not silence."""
    cv2 = pytest.importorskip("cv2")
    frames = [cv2.resize(img, (96, 64))[:, :, ::-1].copy() for img in images[:4]]  # BGR for OpenCV
    video = write_video(tmp_path / "line.avi", frames)
    cams = "".join(f"[[cameras]]\nname = \"{n}\"\nbundle = \"{bundle}\"\ntrigger = \"{t}\"\ngrab_timeout = 0.5\n"
                   f"[cameras.source]\ntype = \"video\"\npath = \"{video}\"\n" for n, t in
                   (("free", "free-run"), ("trig", "software")))
    cfg = load_config(toml_config(tmp_path, cams))
    with Station(cfg, detectors={"free": detector, "trig": detector}) as station:
        for i in range(5):
            station.trigger("trig", f"P-{i}")
        wait_for(lambda: station.cameras["free"].finished, "the free-run video to end")
        wait_for(lambda: sum(station.state()["cameras"]["trig"]["counts"].values()) == 5, "5 triggered results")
        with pytest.raises(ValueError, match="free-run"):
            station.trigger("free", "X")
    rows = stored(cfg.store)
    free = [r for r in rows if r["camera"] == "free"]
    trig = sorted((r for r in rows if r["camera"] == "trig"), key=lambda r: r["part_id"])
    decoded = []
    cap = cv2.VideoCapture(str(video))
    while (ok_frame := cap.read())[0]:
        decoded.append(ok_frame[1])
    want = detector.predict_batch(decoded, bgr=True)
    assert [r["part_id"] for r in free] == [f"line-{i:06d}" for i in range(4)]
    assert [r["score"] for r in free] == [w.score for w in want]
    assert [r["part_id"] for r in trig] == [f"P-{i}" for i in range(5)]
    assert [r["origin"] for r in trig] == ["api"] * 5
    assert [r["score"] for r in trig[:4]] == [w.score for w in want]
    assert trig[4]["decision"] == "ERROR" and "no frame" in trig[4]["error"]


def test_sigterm_flushes_and_exits_cleanly(tmp_path: Path, bundle: Path, images: list[np.ndarray]) -> None:
    """The CLI under SIGTERM (systemctl stop): every image already in the folder is in the store, exit 0.
    It runs where torch cannot be imported (an edge device): the station needs the runtime only."""
    inbox = tmp_path / "inbox"
    write_images(inbox, images[:3])
    (inbox / "bad.png").write_bytes(b"not a png")  # an ERROR row; the others are NG (threshold ~0), archived
    config = toml_config(tmp_path, folder_camera("top", bundle, inbox, 'backend = "onnxruntime"\nthreshold = 1e-12'))
    child = ("import sys; sys.modules['torch'] = None; from aminet_edge.cli import main; "
             f"sys.argv = ['aminet-edge', 'station', {str(config)!r}]; main()")
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, text=True)
    try:
        store = tmp_path / "st" / "results.db"
        wait_for(lambda: store.is_file() and len(stored(store)) == 4, "4 stored results")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert '"stopped": true' in err
    rows = stored(store)
    assert [r["decision"] for r in rows].count("NG") == 3 and [r["decision"] for r in rows].count("ERROR") == 1
    assert all(Path(r["image_path"]).is_file() for r in rows if r["decision"] == "NG")  # archive flushed at stop


# ---- GenICam: a GigE Vision camera simulated by Aravis on 127.0.0.1 ---------------------------------
def aravis() -> Any:
    """Aravis' GObject module, or skip."""
    try:
        from aminet_edge.station.sources import _aravis

        return _aravis()[0]
    except ImportError as exc:
        pytest.skip(str(exc))


def fake_gige(serial: str) -> subprocess.Popen:
    """arv-fake-gv-camera-0.8 on 127.0.0.1 (device id Aravis-Fake-<serial>), or skip."""
    fake = shutil.which("arv-fake-gv-camera-0.8")
    if fake is None:
        pytest.skip("Aravis' fake GigE Vision camera is not installed (apt-get install aravis-tools)")
    aravis()
    return subprocess.Popen([fake, "-i", "127.0.0.1", "-s", serial], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_genicam_camera_software_trigger_and_free_run(tmp_path: Path, bundle: Path) -> None:
    """arv-fake-gv-camera-0.8 is a GigE Vision camera on the loopback interface: each trigger takes one of
    its frames (TriggerSoftware) under the trigger's part id. Every frame is NG (threshold ~0), so the
    archive holds the exact frames: Detector.predict on them gives the stored scores. Then the same camera
    in free-run (continuous acquisition)."""
    serial = f"T{os.getpid()}"
    proc = fake_gige(serial)
    det = Detector.load(bundle, backend="onnxruntime", batch_size=1, threshold=1e-12)
    cam = (f"[[cameras]]\nname = \"gige\"\nbundle = \"{bundle}\"\ntrigger = \"software\"\n"
           f"[cameras.source]\ntype = \"genicam\"\npath = \"Aravis-Fake-{serial}\"\n")
    cfg = load_config(toml_config(tmp_path, cam))
    try:
        with Station(cfg, detectors={"gige": det}) as station:
            wait_for(lambda: station.state()["cameras"]["gige"]["source"] == "running", "the camera to open")
            for i in range(3):
                station.trigger("gige", f"G-{i}")
            wait_for(lambda: station.state()["archive"]["files"] == 6, "3 archived frames")
        rows = stored(cfg.store)
        free = tmp_path / "free"
        free.mkdir()
        free_cfg = load_config(toml_config(free, cam.replace('trigger = "software"', 'trigger = "free-run"')))
        with Station(free_cfg, detectors={"gige": det}) as station:  # continuous acquisition
            wait_for(lambda: sum(station.state()["cameras"]["gige"]["counts"].values()) >= 3, "3 free-run frames")
        assert {r["origin"] for r in stored(free_cfg.store)} == {"free-run"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [r["part_id"] for r in rows] == ["G-0", "G-1", "G-2"] and {r["decision"] for r in rows} == {"NG"}
    assert all(r["ref"].startswith(f"Aravis-Fake-{serial}#") for r in rows)
    frames = [np.asarray(Image.open(r["image_path"])) for r in rows]
    assert frames[0].shape == (512, 512, 3)  # the fake camera's Mono8 512 x 512, grey replicated
    want = det.predict_batch([f[..., 0] for f in frames])
    assert [r["score"] for r in rows] == [w.score for w in want]
    det.close()


def hardware_camera(bundle: Path, device: str, line: str = "Line0", activation: str = "RisingEdge") -> str:
    return (f"[[cameras]]\nname = \"hw\"\nbundle = \"{bundle}\"\ntrigger = \"hardware\"\n"
            f"trigger_line = \"{line}\"\ntrigger_activation = \"{activation}\"\n"
            f"[cameras.source]\ntype = \"genicam\"\npath = \"{device}\"\n")


def test_genicam_hardware_trigger_sets_the_camera_and_refuses_what_it_lacks(tmp_path: Path, bundle: Path,
                                                                           detector: Detector) -> None:
    """trigger = "hardware" on the simulated GigE Vision camera: after start, a second connection reads
    TriggerMode On, TriggerSource Line0, TriggerActivation RisingEdge from the camera (set otherwise before).
    A line the camera lacks (Line1) stops the camera with a message naming the feature; an edge it lacks
    (FallingEdge: it offers RisingEdge only) makes the CLI exit 1 with the same kind of message. (This simulator sends no frame in Line0 mode: it has no line
    input; see the in-process Fake device test for frames.)"""
    av = aravis()
    serial = f"H{os.getpid()}"
    device = f"Aravis-Fake-{serial}"
    proc = fake_gige(serial)

    def features() -> dict[str, str]:
        av.update_device_list()
        camera = av.Camera.new(device)
        return {f: camera.get_string(f) for f in ("TriggerMode", "TriggerSource", "TriggerActivation")}

    def listed() -> bool:
        av.update_device_list()
        return device in {av.get_device_id(i) for i in range(av.get_n_devices())}

    try:
        wait_for(listed, "the simulated camera")
        camera = av.Camera.new(device)
        camera.set_string("TriggerMode", "Off")
        camera.set_string("TriggerSource", "Software")
        del camera  # gives the control channel back
        assert features()["TriggerSource"] == "Software"
        cfg = load_config(toml_config(tmp_path, hardware_camera(bundle, device)))
        with Station(cfg, detectors={"hw": detector}) as station:
            wait_for(lambda: station.state()["cameras"]["hw"]["source"] == "running", "the camera to open")
            assert features() == {"TriggerMode": "On", "TriggerSource": "Line0", "TriggerActivation": "RisingEdge"}
        (tmp_path / "line1").mkdir()
        cfg = load_config(toml_config(tmp_path / "line1", hardware_camera(bundle, device, "Line1")))
        with Station(cfg, detectors={"hw": detector}) as station:
            wait_for(lambda: station.cameras["hw"].finished, "the refused camera to stop")
            status = station.state()["cameras"]["hw"]["source"]
        assert status == (f"refused: GenICam camera {device}: TriggerSource has no entry 'Line1' "
                          "(it offers Line0, Software)")
        (tmp_path / "falling").mkdir()
        config = toml_config(tmp_path / "falling", hardware_camera(bundle, device, activation="FallingEdge")
                             .replace("[cameras.source]", 'backend = "onnxruntime"\n[cameras.source]'))
        cli = subprocess.run([sys.executable, "-m", "aminet_edge", "station", str(config)], capture_output=True,
                             text=True, timeout=DEADLINE_S)
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert (f"camera hw: refused: GenICam camera {device}: TriggerActivation has no entry 'FallingEdge' "
                "(it offers RisingEdge)") in cli.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_genicam_hardware_trigger_results_carry_the_frame_id_and_time(tmp_path: Path, bundle: Path) -> None:
    """Frames in hardware-trigger mode from Aravis' in-process Fake device (the same simulated camera as
    arv-fake-gv-camera, without the network): in trigger mode it sends a frame per 1/25 s, as if its line
    were pulsed at 25 Hz (it does not look at TriggerSource). Each result's part id is the buffer's frame id
    (consecutive: the Fake device counts only frames it delivers), its image the camera's diagonal ramp
    for that frame id ((x + y + id) % 255, computed here), its time the buffer's timestamp in epoch seconds.
    Paused, the camera's frames become ERROR results (the part still gets an answer), ids still consecutive."""
    av = aravis()
    av.enable_interface("Fake")
    det = Detector.load(bundle, backend="onnxruntime", batch_size=1, threshold=1e-12)  # all NG: archived
    cfg = load_config(toml_config(tmp_path, hardware_camera(bundle, "Fake_1")))
    try:
        before = time.time()
        with Station(cfg, detectors={"hw": det}) as station:
            wait_for(lambda: station.state()["cameras"]["hw"]["counts"]["NG"] >= 3, "3 frames")
            station.pause("hw")
            wait_for(lambda: station.state()["cameras"]["hw"]["counts"]["ERROR"] >= 1, "a frame while paused")
        after = time.time()
    finally:
        av.disable_interface("Fake")
        det.close()
    rows = stored(cfg.store)
    assert {r["origin"] for r in rows} == {"hardware"}
    decisions = [r["decision"] for r in rows]
    n_ng = decisions.count("NG")
    assert n_ng >= 3 and decisions == ["NG"] * n_ng + ["ERROR"] * (len(rows) - n_ng) and len(rows) > n_ng
    assert {r["error"] for r in rows[n_ng:]} == {"the camera is paused"}
    ids = [int(r["part_id"]) for r in rows]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(r["ref"].startswith(f"Fake_1#{r['part_id']}@") for r in rows)
    times = [r["time"] for r in rows]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    y, x = np.mgrid[:512, :512]
    for row in rows[:3]:
        image = np.asarray(Image.open(row["image_path"]))[..., 0]
        np.testing.assert_array_equal(image, (x + y + int(row["part_id"])) % 255)


def test_a_missing_source_is_retried_and_reported(tmp_path: Path, bundle: Path, detector: Detector,
                                                  images: list[np.ndarray]) -> None:
    """The watched folder does not exist at start: the camera reports `reconnecting` and counts it, then
    picks the folder up once it appears (a camera that drops is reopened with back-off)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox)))
    inbox.rmdir()
    with Station(cfg, detectors={"top": detector}) as station:
        cam = lambda: station.state()["cameras"]["top"]  # noqa: E731
        wait_for(lambda: cam()["source"].startswith("reconnecting") and cam()["reconnects"] >= 1, "a reconnect")
        assert "watched folder is missing" in cam()["source"]
        write_images(inbox, images[:2])
        wait_for(lambda: sum(cam()["counts"].values()) == 2, "2 results after the folder appeared")
        assert cam()["source"] == "running"


def test_cli_check_and_config_errors(tmp_path: Path, bundle: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = toml_config(tmp_path, folder_camera("top", bundle, inbox))
    run = [sys.executable, "-m", "aminet_edge", "station"]
    ok = subprocess.run([*run, str(good), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok (1 camera(s))" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('type = "folder"', 'type = "floppy"'))
    err = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert err.returncode == 1 and "cameras[0].source.type: must be one of" in err.stderr
    assert "Traceback" not in err.stderr


def test_the_export_kit_station_config_and_unit() -> None:
    """export/service/station.toml is a valid config; the systemd unit in docs/station.md is the kit's file."""
    import re

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "export/service/station.toml", check_paths=False)
    assert [c.source.type for c in cfg.cameras] == ["folder"]
    assert cfg.store == Path("/var/lib/aminet/station/results.db")
    doc = (root / "docs/station.md").read_text()
    block = re.search(r"```ini\n(.*?)```", doc, re.S)
    assert block is not None and block.group(1) == (root / "export/service/aminet-station.service").read_text()


def test_a_stream_that_stops_is_reopened(tmp_path: Path, bundle: Path, detector: Detector,
                                         images: list[np.ndarray]) -> None:
    """A `stream` source (live: RTSP / USB) that stops delivering is closed and reopened with back-off; a
    video file opened as a stream ends after 2 frames, so the camera reconnects and sees them again."""
    cv2 = pytest.importorskip("cv2")
    video = write_video(tmp_path / "live.avi", [cv2.resize(img, (64, 64)) for img in images[:2]])
    cam = (f"[[cameras]]\nname = \"live\"\nbundle = \"{bundle}\"\n"
           f"[cameras.source]\ntype = \"stream\"\npath = \"{video}\"\n")
    cfg = load_config(toml_config(tmp_path, cam))
    with Station(cfg, detectors={"live": detector}) as station:
        state = lambda: station.state()["cameras"]["live"]  # noqa: E731
        wait_for(lambda: state()["reconnects"] >= 1 and sum(state()["counts"].values()) >= 4, "a reconnect, 4 frames")
    rows = stored(cfg.store)
    assert [r["part_id"] for r in rows[:4]] == ["camera-000000", "camera-000001", "camera-000002", "camera-000003"]
    assert rows[0]["score"] == rows[2]["score"] and rows[1]["score"] == rows[3]["score"]  # the same frames again
