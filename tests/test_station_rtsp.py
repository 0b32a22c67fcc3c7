"""The station's `stream` source against a real RTSP server: GStreamer's gst-rtsp-server (Debian
`gir1.2-gst-rtsp-server-1.0`, `gstreamer1.0-plugins-good`), run by the tests in a process of its own,
serving a generated MJPEG video (encoded by `ffmpeg`) (RTP/JPEG, RFC 2435) over TCP only, so the client must fall back from
UDP as a camera behind a firewall makes it. The station's camera reads it through OpenCV's FFmpeg.

Every frame inspected is checked against the video file decoded here: it must be the file's next frame,
and its stored score that of the same model on that frame. Then the server is killed and started again:
the camera reports the drop, retries with growing back-off, and inspects the stream again. Every wait
polls a condition with a deadline; nothing is timed. Skips, saying why, where GStreamer's RTSP server or
PyGObject or ffmpeg is missing (scripts/test.sh installs them).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")  # the shared bundle is built with torch
cv2 = pytest.importorskip("cv2")

from test_detector import shared_bundle  # noqa: E402
from test_station import toml_config, wait_for  # noqa: E402

from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.station import Station, load_config  # noqa: E402
from aminet_edge.station.store import ResultStore  # noqa: E402

# gst-rtsp-server serving VIDEO (an MJPEG AVI) at rtsp://127.0.0.1:PORT/cam, each client from the first
# frame, over RTP/TCP only; prints "ready" once it listens
SERVER = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
Gst.init(None)
port, video = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f'( filesrc location="{video}" ! avidemux ! jpegparse ! rtpjpegpay name=pay0 pt=26 )')
factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
"""

N_FRAMES = 120  # 12 s at 10 frames/s: the stream does not end during the test


def _gst_rtsp_server_missing() -> str | None:
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('avidemux', 'jpegparse', 'rtpjpegpay') if Gst.ElementFactory.find(e) is None]; "
             "print(' '.join(missing))")
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"GStreamer could not be probed: {exc}"
    if out.returncode:
        return ("GStreamer's RTSP server is not usable from Python (apt-get install gir1.2-gst-rtsp-server-1.0 "
                f"gstreamer1.0-plugins-good; pip install PyGObject): {out.stderr.strip().splitlines()[-1:]}")
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()} (apt-get install gstreamer1.0-plugins-good)"
    return None


class RtspServer:
    """gst-rtsp-server on a free port of 127.0.0.1; `start()` (again after `kill()`) on the same port."""

    def __init__(self, video: Path) -> None:
        self.video = video
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port), str(self.video)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready", or "" when it failed
        if line.strip() != "ready":
            self.proc.wait(30)
            raise RuntimeError(f"the RTSP server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def kill(self) -> None:
        """SIGKILL: the camera sees its connection drop, as when a camera loses power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A generated MJPEG video of N_FRAMES distinct 64x64 textures (encoded by ffmpeg with the standard
    Huffman tables RTP/JPEG assumes; OpenCV's own MJPG writer does not use them), and its frames as OpenCV
    decodes the file."""
    reason = _gst_rtsp_server_missing()
    if reason:
        pytest.skip(reason)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg): it encodes the served video")
    tmp = tmp_path_factory.mktemp("rtsp")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(N_FRAMES):
        base = 0.5 + 0.3 * np.sin(xx / (2 + i % 9) + i) * np.cos(yy / (3 + i % 5))
        pixels = np.clip(base[..., None] + rng.normal(0, 0.04, (64, 64, 3)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(tmp / f"frame{i:03d}.png")
    path = tmp / "camera.avi"
    subprocess.run([ffmpeg, "-v", "error", "-framerate", "10", "-i", str(tmp / "frame%03d.png"), "-c:v", "mjpeg",
                    "-pix_fmt", "yuvj420p", "-huffman", "default", "-q:v", "3", str(path)], check=True, timeout=120)
    cap, decoded = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        decoded.append(got[1])
    cap.release()
    assert len(decoded) == N_FRAMES
    return path, decoded


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_bundle(tmp_path_factory)


@pytest.fixture
def server(video_frames: tuple[Path, list[np.ndarray]]) -> Iterator[RtspServer]:
    srv = RtspServer(video_frames[0])
    srv.start()
    yield srv
    srv.kill()


def file_index(image: np.ndarray, decoded: list[np.ndarray]) -> int:
    """The index of the file's frame that `image` is (mean absolute difference below 1 grey level)."""
    diffs = [float(np.abs(image.astype(np.float64) - f).mean()) for f in decoded]
    best = int(np.argmin(diffs))
    assert diffs[best] < 1.0, f"a streamed frame matches no frame of the video (closest: {best}, {diffs[best]:.2f})"
    return best


def runs_of_consecutive(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def test_rtsp_camera_inspects_the_stream_and_reconnects_after_a_drop(
        tmp_path: Path, bundle: Path, server: RtspServer, video_frames: tuple[Path, list[np.ndarray]],
        caplog: pytest.LogCaptureFixture) -> None:
    _, decoded = video_frames
    detector = Detector.load(bundle, backend="onnxruntime", batch_size=1)
    cam = (f"[[cameras]]\nname = \"line1\"\nbundle = \"{bundle}\"\nqueue = 64\n"
           f"[cameras.source]\ntype = \"stream\"\npath = \"{server.url}\"\n")
    cfg = load_config(toml_config(tmp_path, cam), check_paths=False)
    seen: list[tuple[int, np.ndarray]] = []  # (result id, frame) of every inspected frame
    lock = threading.Lock()

    def keep(camera: Any, frame: Any, result: Any, message: dict[str, Any]) -> None:
        if frame.image is not None:
            with lock:
                seen.append((message["id"], frame.image))

    caplog.set_level(logging.WARNING, logger="aminet_edge.station")
    station = Station(cfg, detectors={"line1": detector})
    station.add_listener(keep)
    state = lambda: station.state()["cameras"]["line1"]  # noqa: E731
    try:
        station.start()
        wait_for(lambda: len(seen) >= 15, "15 frames from the RTSP stream")
        before = state()["reconnects"]
        server.kill()
        # the drop is reported, and the camera retries with back-off while the server is down
        wait_for(lambda: state()["reconnects"] >= before + 3, "the drop and two failed reopens")
        assert state()["source"].startswith("reconnecting in ")
        with lock:
            at_restart = len(seen)
        server.start()
        wait_for(lambda: state()["source"] == "running" and len(seen) >= at_restart + 15,
                 "15 frames after the server came back")
    finally:
        station.stop()
        detector.close()
    delays = [float(m) for m in re.findall(r"camera line1: reconnecting in ([\d.]+) s", caplog.text)]
    assert delays[:3] == [0.5, 1.0, 2.0], caplog.text  # the back-off grows: 0.5 s, then doubled
    store = ResultStore(cfg.store)
    try:
        stored = {r["id"]: r for r in store.query(camera="line1")}
    finally:
        store.close()
    assert all(r["decision"] in ("OK", "NG") for r in stored.values())  # no ERROR: every frame decoded
    indices = [file_index(image, decoded) for _, image in seen]
    runs = runs_of_consecutive(indices)
    # each connection delivers the video in order from its first frame, nothing skipped or repeated
    assert len(runs) == 2 and runs[0][0] == 0 and runs[1][0] == 0, runs
    assert len(runs[0]) >= 15 and len(runs[1]) >= 15
    with Detector.load(bundle, backend="onnxruntime", batch_size=1) as reference:
        for (result_id, _), index in list(zip(seen, indices))[::5]:  # the stored score is the model's on that frame
            assert stored[result_id]["score"] == pytest.approx(reference.predict(decoded[index], bgr=True).score,
                                                               rel=1e-5)
