"""The station's live view (aminet_edge/station/web.py) in a real headless Chromium driven by Selenium.

One station (a watched-folder camera over a copy of the shared bundle, so the sensitivity written to its
calibration touches no other test) and one browser per module. Every wait polls the page or the store
with a deadline; nothing is timed. Needs Debian's `chromium` and `chromium-driver` and `selenium`
(scripts/test.sh installs them); the browser tests skip, saying so, without them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")  # the shared bundle is built with torch
pytest.importorskip("aiohttp")

from test_detector import generated_images, shared_bundle  # noqa: E402
from test_station import folder_camera, toml_config, wait_for, write_images  # noqa: E402

from aminet_edge.bundle import read_config  # noqa: E402
from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.runtime.detector import resolve_thresholds  # noqa: E402
from aminet_edge.station import Station, StationConfigError, load_config  # noqa: E402
from aminet_edge.station.config import WebConfig  # noqa: E402
from aminet_edge.station.station import load_detector  # noqa: E402
from aminet_edge.station.web import TILE_SIDE, LiveView, parse_address  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")


# ---- config and address parsing (no browser) --------------------------------------------------------
def test_web_table_is_validated_with_the_key_named(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cam = folder_camera("top", tmp_path, tmp_path / "in")
    cfg = load_config(toml_config(tmp_path, cam, station="[web]\nport = 0\n"), check_paths=False)
    assert cfg.web == WebConfig(host="127.0.0.1", port=0, token="", ng_thumbnails=12)  # loopback unless told
    for web, message in (("[web]\nport = 70000", "web.port: must be an integer in [0, 65535]"),
                         ("[web]\ntoken = \"short\"", "web.token: must be 16 characters or more"),
                         ("[web]\nhots = \"0.0.0.0\"", "web.hots: unknown key")):
        with pytest.raises(StationConfigError, match=re.escape(message)):
            load_config(toml_config(tmp_path, cam, station=web), check_paths=False)


def test_parse_address() -> None:
    assert parse_address("0.0.0.0:8090") == ("0.0.0.0", 8090)
    assert parse_address(":8090") == ("127.0.0.1", 8090)
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="give HOST:PORT"):
        parse_address("localhost")


# ---- what the view does per frame, and its live tile (no browser) -------------------------------------
def test_live_tile_is_the_heatmap_over_the_frame_at_tile_size() -> None:
    """A 1000x1500 BGR frame (subsampled by a step of 5 before resizing) against the reference: the frame and
    map area-resized by OpenCV to the tile's size, blended by `overlay_panels` (its middle panel)."""
    cv2 = pytest.importorskip("cv2")
    from aminet_edge.evaluation.heatmaps import overlay_panels
    from aminet_edge.station.sources import Frame
    from aminet_edge.station.web import tile_jpeg

    h, w = 1000, 1500
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 150) * np.cos(yy / 120)], axis=2)
    amap = np.exp(-(((xx - 1000) / 200) ** 2 + ((yy - 300) / 150) ** 2)).astype(np.float32)  # one hot spot
    result = type("Result", (), {"anomaly_map": amap, "thresholds": type("T", (), {"pixel": 0.5})()})()
    bgr8 = (rgb[:, :, ::-1] * 255 + 0.5).astype(np.uint8)
    tile = np.asarray(Image.open(io.BytesIO(tile_jpeg(Frame(bgr8, "f", "p", 0.0, "api", bgr=True), result))),
                      dtype=np.float64)
    th, tw = round(h * TILE_SIDE / w), TILE_SIDE
    assert tile.shape == (th, tw, 3)
    small = cv2.resize(bgr8[:, :, ::-1].astype(np.float32) / 255, (tw, th), interpolation=cv2.INTER_AREA)
    small_map = cv2.resize(amap, (tw, th), interpolation=cv2.INTER_AREA)
    reference = overlay_panels(small, small_map, 0.0, 1.0)[:, tw:2 * tw].astype(np.float64)
    diff = np.abs(tile - reference)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 16  # JPEG and resampling differences only
    hot, cold = tile[round(300 * th / h), round(1000 * tw / w)], tile[th - 5, 5]
    assert hot[0] > hot[2] + 60 and cold[2] > cold[0]  # red on the hot spot, blue where the map is low


def test_the_view_keeps_numbers_per_frame_and_pushes_the_latest(tmp_path: Path, line: Line) -> None:
    """Results recorded through a real Station while nobody watches: the view encodes nothing and starts no
    task; the next push carries the latest result only, and every result as a trend point."""
    from aminet_edge.station.sources import Frame

    inbox = tmp_path / "in"
    inbox.mkdir()
    detector = Detector.load(line.bundle, backend="onnxruntime", batch_size=1)
    station = Station(load_config(toml_config(tmp_path, folder_camera("top", line.bundle, inbox))), {"top": detector})
    try:
        view = LiveView(station, WebConfig(port=0))  # not started: no server, no event stream
        cam = station.camera("top")
        expected = []
        for i, image in enumerate(line.images * 3):
            result = detector.predict(image)
            record = station._record(cam, Frame(image, f"ref{i}", f"p{i}", 0.0, "api"), result, None)
            expected.append([record.id, pytest.approx(result.score), pytest.approx(result.thresholds.image),
                             record.decision])
        top = view.views["top"]
        assert top.tile is None and top.shown is None and view._publisher is None  # nothing made per frame

        def news() -> list[tuple[str, Any]]:
            return [(e.split("\n")[0][len("event: "):], json.loads(e.split("\ndata: ")[1]))
                    for e in asyncio.run(view._news("top", top)).decode().split("\n\n") if e]

        events = news()
        assert [kind for kind, _ in events] == ["result", "tile", "trend"]
        assert events[0][1]["id"] == record.id and events[0][1]["part_id"] == f"p{len(expected) - 1}"  # the latest
        assert events[1][1]["id"] == record.id
        tile = Image.open(io.BytesIO(base64.b64decode(events[1][1]["jpeg"])))
        h, w = line.images[-1].shape[:2]
        assert tile.format == "JPEG" and tile.size == (w, h)  # within TILE_SIDE: the frame's own size
        assert events[2][1] == {"camera": "top", "points": expected}  # every result, in order
        record = station._record(cam, Frame(None, "trigger", "p-error", 0.0, "api", error="no frame"), None, "no frame")
        assert news() == [("result", json.loads(json.dumps(record.message()))),
                          ("trend", {"camera": "top", "points": [[record.id, None, None, "ERROR"]]})]
        assert news() == []  # nothing new, nothing pushed
        stored = [r["latency_ms"] for r in station.store.query(camera="top")]
        assert view.health()["cameras"]["top"]["latency_ms"] == {
            "p50": pytest.approx(np.percentile(stored, 50)), "p99": pytest.approx(np.percentile(stored, 99))}
    finally:
        station.stop()
        detector.close()


# ---- the running station and its browser -------------------------------------------------------------
class Line:
    """A running station with its live view, the camera's inbox and the bundle copy it writes to."""

    def __init__(self, root: Path, bundle: Path) -> None:
        self.bundle = root / "bundle"
        shutil.copytree(bundle, self.bundle, ignore=shutil.ignore_patterns("cache"))
        self.inbox, self.side_inbox = root / "inbox", root / "side"
        self.inbox.mkdir()
        self.side_inbox.mkdir()
        cameras = folder_camera("top", self.bundle, self.inbox) + folder_camera("side", self.bundle, self.side_inbox)
        path = toml_config(root, cameras,
                           station=f"[web]\nport = 0\ntoken = \"{TOKEN}\"\nng_thumbnails = 4\n")
        self.config = load_config(path)
        self.detector = Detector.load(self.bundle, backend="onnxruntime", batch_size=1)
        self.side = Detector.load(self.bundle, backend="onnxruntime", batch_size=1)
        self.station = Station(self.config, {"top": self.detector, "side": self.side}).start()
        assert self.config.web is not None
        self.view = LiveView(self.station, self.config.web).start()
        self.url = self.view.url
        self.images = generated_images(6)
        self.pushed = 0

    def push(self, index: int) -> str:
        """Write generated image `index` into the inbox under a new part id; returns the part id."""
        part = f"part-{self.pushed:03d}"
        self.pushed += 1
        write_images(self.inbox, [self.images[index]], [f"{part}.png"])
        return part

    def row(self, part: str) -> dict[str, Any] | None:
        return next((r for r in self.station.store.query(camera="top") if r["part_id"] == part), None)

    def close(self) -> None:
        self.view.stop()
        self.station.stop()
        self.detector.close()
        self.side.close()


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    line = Line(tmp_path_factory.mktemp("web"), shared_bundle(tmp_path_factory))
    yield line
    line.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="aminet-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")  # a new empty profile: nothing from a user's
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        try:
            yield driver
        finally:
            driver.quit()


def text_of(browser: Any, css: str) -> str:
    return str(browser.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                                      css))


def post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_page_loads_with_its_camera_and_health(line: Line, browser: Any) -> None:
    browser.get(line.url)
    assert browser.title == "aminet-edge station"
    wait_for(lambda: "top" in text_of(browser, "#health-cameras"), "the health panel's camera row")
    wait_for(lambda: text_of(browser, "#link") == "live", "the event stream to open")
    assert "onnxruntime" in text_of(browser, "#health-cameras")  # the backend in the health panel
    assert "CPU: load" in text_of(browser, "#health-host")


def read_events(url: str, parts: list[str]) -> None:
    """A second event-stream client beside the page: the part ids of the `result` events it receives."""
    with urllib.request.urlopen(url + "api/events", timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data:") and b'"part_id"' in line and b'"cameras"' not in line:
                parts.append(json.loads(line[5:])["part_id"])


def test_a_pushed_frame_appears_with_its_decision(line: Line, browser: Any) -> None:
    browser.get(line.url)
    wait_for(lambda: text_of(browser, "#link") == "live", "the event stream to open")
    streamed: list[str] = []
    threading.Thread(target=read_events, args=(line.url, streamed), daemon=True).start()
    part = line.push(1)
    wait_for(lambda: part in text_of(browser, "#camera-top .part"), f"{part} on the page")
    wait_for(lambda: part in streamed, f"{part} on a second event stream")  # every stream is woken
    row = wait_for(lambda: line.row(part), f"{part} in the store")
    expected = line.detector.predict(line.images[1])  # the independent reference: the same model, same image
    assert row["decision"] == ("NG" if expected.is_anomaly else "OK")
    assert text_of(browser, "#camera-top .decision") == row["decision"]
    assert math.isclose(row["score"], expected.score, rel_tol=1e-5)
    # the live tile (the frame with its heatmap, TILE_SIDE px at most) has loaded, with the frame's aspect
    size = wait_for(lambda: browser.execute_script(
        "const i = document.querySelector('#camera-top .frame'); return i.complete && i.naturalWidth ? "
        "[i.naturalWidth, i.naturalHeight] : null"), "the frame image to load")
    h, w = line.images[1].shape[:2]
    assert max(size) <= TILE_SIDE and size[0] == pytest.approx(size[1] * w / h, rel=0.05)
    # a click on it opens the shown result full size: image | heatmap | mask, three panels side by side
    browser.find_element("css selector", "#camera-top .frame").click()
    full = wait_for(lambda: browser.execute_script(
        "const i = document.querySelector('#full-img'); return document.querySelector('#full').open && "
        "i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null"), "the full-size panels")
    browser.execute_script("document.querySelector('#full').close()")
    assert full == [3 * w, h]
    counts = line.station.state()["cameras"]["top"]["counts"]
    wait_for(lambda: f"OK {counts['OK']} · NG {counts['NG']}" in text_of(browser, "#camera-top .counts"),
             "the counters")


def test_sensitivity_from_the_page_reaches_detector_bundle_and_audit(line: Line, browser: Any) -> None:
    browser.get(line.url)
    wait_for(lambda: browser.execute_script("return document.querySelector('#camera-top .sens') !== null"),
             "the camera card")
    old = line.detector.sensitivity
    browser.find_element("css selector", "#token").send_keys(TOKEN)
    sens = browser.find_element("css selector", "#camera-top .sens")
    sens.clear()
    sens.send_keys("0.8")
    browser.find_element("css selector", "#camera-top .apply").click()
    audit = wait_for(lambda: line.station.store.sensitivity_changes("top"), "the audit row")
    assert [(a["camera"], a["old"], a["new"], a["address"]) for a in audit] == [("top", old, 0.8, "127.0.0.1")]
    assert line.detector.sensitivity == 0.8
    calibration = read_config(line.bundle).calibration
    assert calibration is not None and calibration.sensitivity == 0.8  # kept in the bundle
    expected = resolve_thresholds(calibration, "normal", None, 0.8)
    assert line.detector.thresholds.image == pytest.approx(calibration.image_threshold * 4 ** (0.5 - 0.8))
    assert line.detector.thresholds == expected
    wait_for(lambda: "applied" in text_of(browser, "#camera-top .msg"), "the page's confirmation")
    # the next frame is decided with the new threshold
    part = line.push(2)
    row = wait_for(lambda: line.row(part), f"{part} in the store")
    assert row["score"] / row["normalized"] == pytest.approx(expected.image, rel=1e-6)
    # a restarted station loads it from the bundle (its config sets no sensitivity)
    assert line.config.cameras[0].sensitivity is None
    with load_detector(line.config.cameras[0]) as again:
        assert again.sensitivity == 0.8 and again.thresholds == expected


def test_changes_without_the_token_are_refused(line: Line, browser: Any, tmp_path: Path) -> None:
    url = line.url + "api/cameras/top/sensitivity"
    before = line.station.store.sensitivity_changes()
    assert post(url, {"sensitivity": 0.1}, None)[0] == 401
    assert post(url, {"sensitivity": 0.1}, "x" * len(TOKEN))[0] == 403
    assert post(line.url + "api/cameras/top/pause", {}, None)[0] == 401
    assert post(url, {"sensitivity": 1.5}, TOKEN)[0] == 400  # out of range: refused, nothing changed
    assert line.station.store.sensitivity_changes() == before
    assert line.detector.sensitivity == (before[-1]["new"] if before else 0.5)
    assert not line.station.state()["cameras"]["top"]["paused"]
    # the page without a token shows the refusal
    browser.get(line.url)
    browser.execute_script("sessionStorage.clear()")
    browser.get(line.url)
    wait_for(lambda: browser.execute_script("return document.querySelector('#camera-top .apply') !== null"),
             "the camera card")
    browser.find_element("css selector", "#camera-top .pause").click()
    wait_for(lambda: "refused (401)" in text_of(browser, "#camera-top .msg"), "the refusal on the page")
    # a view with no token configured is read-only: even a bearer is refused
    readonly = LiveView(line.station, WebConfig(port=0)).start()
    try:
        assert post(readonly.url + "api/cameras/top/pause", {}, TOKEN)[0] == 403
    finally:
        readonly.stop()
    assert not line.station.state()["cameras"]["top"]["paused"]


def test_pause_and_resume(line: Line) -> None:
    assert post(line.url + "api/cameras/top/pause", {}, TOKEN) == (200, '{"camera": "top", "paused": true}')
    assert line.station.state()["cameras"]["top"]["paused"]
    part = line.push(0)  # taken once the camera resumes
    assert post(line.url + "api/cameras/top/resume", {}, TOKEN)[0] == 200
    assert wait_for(lambda: line.row(part), f"{part} after resume")["decision"] in ("OK", "NG")


def test_screenshot_shows_the_decision(line: Line, browser: Any) -> None:
    for i in (1, 3, 5, 0, 4):  # a few parts, NG ones among them, for the trend and the thumbnails
        last = line.push(i)
    write_images(line.side_inbox, line.images[::-1], [f"side-{i}.png" for i in range(len(line.images))])
    browser.get(line.url)
    wait_for(lambda: last in text_of(browser, "#camera-top .part"), f"{last} on the page")
    wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#camera-top .ng img, #camera-top .frame')]"
        ".every(i => i.complete && i.naturalWidth > 0)"), "the images to load")
    decision = browser.find_element("css selector", "#camera-top .decision")
    assert decision.is_displayed() and decision.text in ("OK", "NG")
    assert decision.text == line.row(last)["decision"]
    png = browser.get_screenshot_as_png()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # not blank: text, the frame and its heatmap
    target = Path(__file__).parent.parent / "docs" / "station-live.png"
    if target.parent.is_dir() and os.environ.get("AMINET_WRITE_SCREENSHOT"):  # docs/station-live.png
        Image.open(io.BytesIO(png)).convert("RGB").quantize(64).save(target, optimize=True)


def test_page_weight_and_no_external_resources(line: Line) -> None:
    def get(path: str) -> bytes:
        with urllib.request.urlopen(line.url + path, timeout=30) as resp:
            return bytes(resp.read())

    html = get("").decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(assets) == ["live.css", "live.js"]  # nothing external: lines have no internet
    total = len(html) + sum(len(get(a)) for a in assets)
    assert total < 500_000, f"the page weighs {total} bytes"
    assert not re.search(r"https?://", get("live.js").decode() + get("live.css").decode())


def test_cli_serves_the_live_view_and_stops_on_sigterm(tmp_path: Path, line: Line) -> None:
    """`aminet-edge station CONFIG --web 127.0.0.1:0` (port 0: any free one) prints where the view is;
    SIGTERM ends both. A bad --web names the option."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = toml_config(tmp_path, folder_camera("top", line.bundle, inbox, 'backend = "onnxruntime"'))
    cmd = [sys.executable, "-m", "aminet_edge", "station", str(config), "--web"]
    bad = subprocess.run([*cmd, "localhost"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--web" in bad.stderr and "give HOST:PORT" in bad.stderr
    proc = subprocess.Popen([*cmd, "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for text in proc.stderr:  # until the start line (or the end of the output: the process failed)
            if "live view:" in text:
                break
        url = text.rsplit("live view: ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), text
        with urllib.request.urlopen(url + "api/state", timeout=30) as resp:
            state = json.load(resp)
        assert list(state["cameras"]) == ["top"] and state["web"]["writable"] is False
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert '"stopped": true' in err
