"""Inspection station under load: a soak with simulated cameras, and the station's overhead per frame.

Usage:
  python bench/station.py soak [--minutes 30] [--cameras 4] [--preset tiny] [--backend auto]
  python bench/station.py overhead [--frames 300] [--preset tiny] [--backend auto]
  python bench/station.py throughput [--frames 100] [--cameras 4]
  python bench/station.py latency [--frames 50]
  python bench/station.py web [--frames 100] [--cameras 4]

soak: N cameras, each a generated video looped forever (free-run), each with its own Detector, all sent
to MQTT through a mosquitto broker started here (when installed) and read back by a subscriber. RSS is
read every minute; at the end the station is stopped (flush) and the script checks that every stored
result reached the subscriber (no lost result) and that no camera dropped a frame.
overhead: the same frames through `Detector.predict` alone, one at a time, and through a one-camera
station (free-run video file, store, no outputs); the difference in wall time per frame is the station's
overhead (decoding runs in the acquire thread, in parallel with the model). Throughput ratio printed.
throughput: N cameras (free-run, one Detector each) over the same video against one Detector's
`predict_batch` (batch 8) on all their frames.
latency: a software-triggered camera driven over OPC UA by an asyncua client acting as the PLC: from
writing Trigger to reading ResultReady = 1 (the client polls; its read round trip is included).
web: N cameras at full rate (free-run video files) without the live view, with it and a client making the
page's requests, and with the page open in a headless Chromium on the same machine (Selenium, Debian's
chromium-driver), runs interleaved, median of --repeats: the ratio of throughputs is the cost of watching;
the CPU of the view's threads and of Chromium per second of run are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result  # noqa: E402
from runtime import DEFAULT_BUNDLE, ensure_bundle  # noqa: E402
from soak import rss_mb  # noqa: E402


def write_video(path: Path, n: int, size: tuple[int, int] = (256, 256), seed: int = 0) -> list[np.ndarray]:
    """A generated MJPG video of `n` textured frames (every 7th with a bright scratch); returns the BGR
    frames as decoded back (what the station will see)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    for i in range(n):
        base = 0.5 + 0.2 * np.sin(xx / (3 + i % 5)) * np.cos(yy / 5)
        img = np.clip(base[..., None] + rng.normal(0, 0.05, (h, w, 3)), 0, 1)
        if i % 7 == 3:
            img[h // 3:h // 3 + 8, w // 4:3 * w // 4] = (0.1, 0.2, 1.0)
        writer.write((img * 255).astype(np.uint8))
    writer.release()
    cap, frames = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        frames.append(got[1])
    return frames


def config_text(tmp: Path, bundle: Path, video: Path, cameras: int, backend: str, loop: bool,
                mqtt_port: int | None, archive: bool = True) -> Path:
    out = (f"[outputs.mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nclient_id = \"bench-station\"\n"
           if mqtt_port else "")
    cams = "".join(f"[[cameras]]\nname = \"cam{k}\"\nbundle = \"{bundle}\"\nbackend = \"{backend}\"\nqueue = 4\n"
                   f"archive_ng = {str(archive).lower()}\n"
                   f"[cameras.source]\ntype = \"video\"\npath = \"{video}\"\nloop = {str(loop).lower()}\n"
                   for k in range(cameras))
    path = tmp / "station.toml"
    path.write_text(f"[station]\nstore = \"results.db\"\narchive_max_files = 200\nflush_timeout = 60\n{out}{cams}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None)
    if binary is None:
        print("mosquitto not installed: soak without MQTT")
        return None
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def soak(args: argparse.Namespace, bundle: Path, tmp: Path) -> None:
    import paho.mqtt.client as mqtt

    from aminet_edge.station import Station, load_config
    from aminet_edge.station.store import ResultStore

    video = tmp / "camera.avi"
    write_video(video, 50)
    broker = start_broker(tmp)
    ids: set[int] = set()
    sub = None
    if broker is not None:
        subscribed = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        sub.on_connect = lambda c, *_: c.subscribe("aminet/+/result", qos=1)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.on_message = lambda _c, _u, m: ids.add(json.loads(m.payload)["id"])
        sub.connect("127.0.0.1", broker[1])
        sub.loop_start()
        if not subscribed.wait(30):  # the subscription is in place before the first result
            raise RuntimeError("the MQTT subscription was not confirmed")
    cfg = load_config(config_text(tmp, bundle, video, args.cameras, args.backend, True,
                                  broker[1] if broker else None))
    station = Station(cfg).start()
    checkpoints: list[tuple[float, float, int]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.minutes * 60:  # the first checkpoint comes after warm-up
        time.sleep(min(60.0, args.minutes * 60 / 10))
        total = sum(sum(c["counts"].values()) for c in station.state()["cameras"].values())
        checkpoints.append((time.monotonic() - t0, rss_mb(), total))
    state = station.state()
    flushed = station.stop()
    store = ResultStore(cfg.store)
    stored = {r["id"] for r in store.query()}
    store.close()
    if sub is not None:
        deadline = time.monotonic() + 60
        while not stored <= ids and time.monotonic() < deadline:
            time.sleep(0.1)
        sub.disconnect()
        sub.loop_stop()
        broker[0].terminate()  # type: ignore[index]
    lost = len(stored - ids) if sub is not None else "n/a (no broker)"
    dropped = sum(c["dropped"] for c in state["cameras"].values())
    errors = sum(c["counts"]["ERROR"] for c in state["cameras"].values())
    base, final = checkpoints[0][1], checkpoints[-1][1]
    half = checkpoints[len(checkpoints) // 2][1]
    seconds = checkpoints[-1][0]
    lines = [
        f"Station soak: {args.cameras} simulated cameras (a 256x256 MJPG video looped, free-run, one Detector "
        f"each, backend {args.backend}, preset {args.preset}) for {seconds / 60:.1f} min"
        + (", MQTT to a local mosquitto" if sub else "") + f": {len(stored)} results "
        f"({len(stored) / seconds:.1f}/s), {errors} ERROR, {dropped} dropped, lost on MQTT: {lost}, "
        f"outputs flushed: {flushed}.",
        "",
        "| RSS at first checkpoint MiB | RSS at end MiB | growth MiB | growth over 2nd half MiB |",
        "|---|---|---|---|",
        f"| {base:.1f} | {final:.1f} | {final - base:+.1f} | {final - half:+.1f} |",
        "",
        "checkpoints (s: MiB, results): " + ", ".join(f"{t:.0f}: {m:.1f}, {n}" for t, m, n in checkpoints),
    ]
    append_result("station", "\n".join(lines))


class TimedDetector:
    """A Detector that records when each predict call started and ended (perf_counter seconds)."""

    def __init__(self, detector: Any) -> None:
        self.detector, self.calls = detector, []  # type: ignore[var-annotated]
        self.backend, self.config = detector.backend, detector.config

    def predict(self, image: Any, bgr: bool = False) -> Any:
        t = time.perf_counter()
        try:
            return self.detector.predict(image, bgr=bgr)
        finally:
            self.calls.append((t, time.perf_counter()))


def overhead(args: argparse.Namespace, bundle: Path, tmp: Path) -> None:
    """The inspect thread's time between two predict calls while frames are waiting (the queue stays full:
    decoding a 256x256 frame is far quicker than the model): storing the result, handing NG frames to the
    archive, publishing, taking the next frame. Plus whole-run throughput against predict alone."""
    from aminet_edge.runtime import Detector
    from aminet_edge.station import Station, load_config

    video = tmp / "camera.avi"
    frames = write_video(video, args.frames)
    det = Detector.load(bundle, backend=args.backend, batch_size=1)
    for f in frames[:10]:
        det.predict(f, bgr=True)
    gaps: list[float] = []
    runs = []
    ng = 0
    for rep in range(args.repeats):
        t = time.perf_counter()
        for f in frames:
            det.predict(f, bgr=True)
        alone = time.perf_counter() - t
        run = tmp / f"run{rep}"
        run.mkdir()
        timed = TimedDetector(det)
        cfg = load_config(config_text(run, bundle, video, 1, args.backend, False, None, not args.no_archive))
        station = Station(cfg, detectors={"cam0": timed})
        t = time.perf_counter()
        station.start()
        station.wait()
        through = time.perf_counter() - t
        ng = station.state()["cameras"]["cam0"]["counts"]["NG"]
        station.stop()
        gaps += [b[0] - a[1] for a, b in zip(timed.calls, timed.calls[1:])]
        runs.append((alone, through))
    alone, through = (float(np.median([r[i] for r in runs])) for i in (0, 1))
    gap_ms = np.array(gaps) * 1e3
    n = len(frames)
    lines = [
        f"Station overhead: {n} frames 256x256 of a video file ({ng} NG, "
        f"{'not archived' if args.no_archive else 'archived'}), backend {det.backend}, preset {args.preset}, "
        f"{args.repeats} runs; one camera, free-run, result store, no outputs.",
        "",
        "| inspect-thread overhead per frame p50 ms | p99 ms | predict alone ms/frame | station ms/frame | "
        "throughput station / predict |",
        "|---|---|---|---|---|",
        f"| {np.percentile(gap_ms, 50):.3f} | {np.percentile(gap_ms, 99):.3f} | {alone / n * 1e3:.2f} | "
        f"{through / n * 1e3:.2f} | {alone / through:.3f} |",
    ]
    det.close()
    append_result("station", "\n".join(lines))


def throughput(args: argparse.Namespace, bundle: Path, tmp: Path) -> None:
    from aminet_edge.runtime import Detector
    from aminet_edge.station import Station, load_config

    video = tmp / "camera.avi"
    frames = write_video(video, args.frames)
    det = Detector.load(bundle, backend=args.backend, batch_size=8)
    det.predict_batch(frames[:16], bgr=True)
    rows = []
    for rep in range(args.repeats):
        t = time.perf_counter()
        det.predict_batch(frames * args.cameras, bgr=True)
        batch = time.perf_counter() - t
        run = tmp / f"run{rep}"
        run.mkdir()
        station = Station(load_config(config_text(run, bundle, video, args.cameras, args.backend, False, None,
                                                  not args.no_archive)))
        t = time.perf_counter()
        station.start()
        station.wait()
        through = time.perf_counter() - t
        station.stop()
        rows.append((batch, through))
    batch, through = (float(np.median([r[i] for r in rows])) for i in (0, 1))
    n = len(frames) * args.cameras
    lines = [
        f"Station throughput: {args.cameras} cameras x {len(frames)} frames 256x256 (free-run video files, one "
        f"Detector each, {'no archive' if args.no_archive else 'NG archived'}) vs one Detector.predict_batch "
        f"(batch 8) on all {n} frames, backend {det.backend}, preset {args.preset}, median of {args.repeats}.",
        "",
        "| predict_batch frames/s | station frames/s | station / predict_batch |",
        "|---|---|---|",
        f"| {n / batch:.1f} | {n / through:.1f} | {batch / through:.3f} |",
    ]
    det.close()
    append_result("station", "\n".join(lines))


def latency(args: argparse.Namespace, bundle: Path, tmp: Path) -> None:
    import asyncio

    from PIL import Image

    from aminet_edge.runtime import Detector
    from aminet_edge.station import Station, load_config

    frames = write_video(tmp / "camera.avi", args.frames)
    inbox = tmp / "inbox"
    inbox.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(f[:, :, ::-1])).save(inbox / f"part_{i:05d}.png")
    det = Detector.load(bundle, backend=args.backend, batch_size=1)
    t = time.perf_counter()
    for i in range(len(frames)):
        det.predict(str(inbox / f"part_{i:05d}.png"))
    predict_ms = (time.perf_counter() - t) / len(frames) * 1e3
    port = free_port()
    config = tmp / "station.toml"
    config.write_text(f"[station]\nstore = \"results.db\"\n[outputs.opcua]\n"
                      f"endpoint = \"opc.tcp://127.0.0.1:{port}/aminet/\"\n"
                      f"[[cameras]]\nname = \"cam0\"\nbundle = \"{bundle}\"\ntrigger = \"software\"\n"
                      f"archive_ng = {str(not args.no_archive).lower()}\n"
                      f"[cameras.source]\ntype = \"folder\"\npath = \"{inbox}\"\nsettle = 0\n")
    cfg = load_config(config)

    async def plc() -> list[float]:
        from asyncua import Client, ua

        async with Client(f"opc.tcp://127.0.0.1:{port}/aminet/") as client:
            idx = await client.get_namespace_index(cfg.opcua.namespace)  # type: ignore[union-attr]

            def node(name: str) -> Any:
                return client.get_node(ua.NodeId(f"cam0.{name}", idx))

            async def write(name: str, value: bool) -> None:
                await node(name).write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Boolean)))

            async def until(name: str, value: bool) -> None:
                while bool(await node(name).read_value()) != value:
                    await asyncio.sleep(0.0005)  # the client shares the station's process: leave it the GIL

            out = []
            for _ in frames:
                await until("ResultReady", False)
                t0 = time.perf_counter()
                await write("Trigger", True)
                await until("ResultReady", True)
                out.append(time.perf_counter() - t0)
                await write("Trigger", False)
                await write("Acknowledge", True)
                await until("ResultReady", False)
                await write("Acknowledge", False)
            return out

    with Station(cfg, detectors={"cam0": det}) as station:
        ms = np.array(asyncio.run(plc())) * 1e3
        inside = np.array([r["latency_ms"] for r in station.store.query()])
    lines = [
        f"Trigger to OPC UA ResultReady: {len(ms)} parts through the handshake (asyncua client as the PLC, "
        f"polling), 256x256 PNGs from a watched folder, backend {det.backend}, preset {args.preset}.",
        "",
        "| trigger to ResultReady p50 ms | p99 ms | station: trigger seen to result stored p50 ms | "
        "Detector.predict on the same files ms (mean) |",
        "|---|---|---|---|",
        f"| {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | {np.percentile(inside, 50):.2f} | "
        f"{predict_ms:.2f} |",
    ]
    det.close()
    append_result("station", "\n".join(lines))


# as tests/test_station_web.py starts it: no network, a fresh profile
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")


def _page_requests(url: str, stop: threading.Event, connected: threading.Event) -> None:
    """What the page asks of the view, without rendering it (as station/page/live.js does): the event
    stream (results, their tiles inline, trend points); each camera's first tile and its trend once; after
    an NG, its thumbnail list with the next state."""
    import urllib.request

    def get(path: str) -> None:
        urllib.request.urlopen(url + path, timeout=60).read()

    with urllib.request.urlopen(url + "api/events", timeout=60) as stream:
        event, trends, tiles, ng = None, set(), set(), set()
        connected.set()
        for line in stream:
            if stop.is_set():
                return
            text = line.decode()
            if text.startswith("event:"):
                event = text.split()[1]
            elif text.startswith("data:") and event == "result":
                message = json.loads(text[5:])
                if message["camera"] not in tiles:
                    tiles.add(message["camera"])
                    get(f"api/cameras/{message['camera']}/frame.jpg?id={message['id']}")
            elif text.startswith("data:") and event == "trend":
                points = json.loads(text[5:])
                if any(p[3] == "NG" for p in points["points"]):
                    ng.add(points["camera"])
            elif text.startswith("data:") and event == "state":
                for camera in json.loads(text[5:])["cameras"]:
                    if camera not in trends:
                        trends.add(camera)
                        get(f"api/cameras/{camera}/trend")
                for camera in ng:
                    get(f"api/cameras/{camera}/ng")
                ng.clear()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(stat: str) -> float:
    """utime + stime + cutime + cstime (s) of a /proc/.../stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICK


def view_threads_cpu() -> dict[int, float]:
    """{thread id: CPU s} of this process's live-view threads (aminet-web, its worker aminet-web-worker_N, and
    any asyncio_N: only the view runs an event loop with a default executor in this benchmark)."""
    ids = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid, name in ids.items():
        if name.startswith(("aminet-web", "asyncio_")):
            try:
                out[tid] = _cpu_s(Path(f"/proc/self/task/{tid}/stat").read_text())
            except OSError:
                pass
    return out


def process_tree_cpu(pid: int) -> float:
    """CPU s used so far by process `pid` and its descendants (Linux /proc)."""
    stats: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = (int(text.rsplit(")", 1)[1].split()[1]), text)
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _) in stats.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(_cpu_s(stats[p][1]) for p in tree if p in stats)


def web(args: argparse.Namespace, bundle: Path, tmp: Path) -> None:
    from selenium import webdriver

    from aminet_edge.station import Station, load_config
    from aminet_edge.station.config import WebConfig
    from aminet_edge.station.web import LiveView

    video = tmp / "camera.avi"
    frames = write_video(video, args.frames)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "chromedriver")
    browser = webdriver.Chrome(options=options, service=service)
    modes = ("without the view", "view + the page's requests (no rendering)", "view + page open in Chromium")
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    view_cpu: dict[str, list[float]] = {m: [] for m in modes}  # CPU s of the view's threads / s of run
    browser_cpu: dict[str, list[float]] = {m: [] for m in modes}  # CPU s of Chromium / s of run
    try:
        for rep in range(args.repeats):
            for k in [(rep + i) % len(modes) for i in range(len(modes))]:  # each case first in turn
                mode = modes[k]
                run = tmp / f"run{rep}-{k}"
                run.mkdir()
                station = Station(load_config(config_text(run, bundle, video, args.cameras, args.backend, False,
                                                          None, not args.no_archive)))
                view = LiveView(station, WebConfig(port=0)).start() if k else None
                stop, connected = threading.Event(), threading.Event()
                if view is not None and k == 1:
                    threading.Thread(target=_page_requests, args=(view.url, stop, connected), daemon=True).start()
                    connected.wait(60)
                if view is not None and k == 2:  # the page open, its event stream connected, before the first frame
                    browser.get(view.url)
                    deadline = time.monotonic() + 60
                    while browser.execute_script("return document.querySelector('#link').textContent") != "live":
                        if time.monotonic() > deadline:
                            raise RuntimeError("the live view's page did not connect")
                        time.sleep(0.05)
                threads, chromium = view_threads_cpu(), process_tree_cpu(browser.service.process.pid)
                t = time.perf_counter()
                station.start()
                station.wait()
                wall = time.perf_counter() - t
                seconds[mode].append(wall)
                view_cpu[mode].append(sum(c - threads.get(tid, 0.0) for tid, c in view_threads_cpu().items()) / wall)
                browser_cpu[mode].append((process_tree_cpu(browser.service.process.pid) - chromium) / wall)
                stop.set()
                if view is not None and k == 2:
                    shown = browser.execute_script("return document.querySelectorAll('.camera').length")
                    assert shown == args.cameras, f"the page showed {shown} cameras"
                    browser.get("about:blank")
                if view is not None:
                    view.stop()
                station.stop()
    finally:
        browser.quit()
    n = len(frames) * args.cameras
    base = float(np.median(seconds[modes[0]]))
    lines = [
        f"Station throughput with the live view: {args.cameras} cameras x {len(frames)} frames 256x256 "
        f"(free-run video files, one Detector each, backend {args.backend}, "
        f"{'no archive' if args.no_archive else 'NG archived'}), the three cases interleaved (each first in "
        f"turn), median of "
        f"{args.repeats}; client and browser on the same machine as the station.",
        "",
        "| case | frames/s | / without the view | view threads, % of a core | Chromium, % of a core |",
        "|---|---|---|---|---|",
        *(f"| {m} | {n / float(np.median(seconds[m])):.1f} | {base / float(np.median(seconds[m])):.3f} | "
          f"{100 * float(np.median(view_cpu[m])):.1f} | {100 * float(np.median(browser_cpu[m])):.1f} |" for m in modes),
        "",
        "runs, s (interleaved): " + "; ".join(f"{m}: " + ", ".join(f"{x:.2f}" for x in seconds[m]) for m in modes),
    ]
    append_result("station", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["soak", "overhead", "throughput", "latency", "web"])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300, help="overhead, throughput, latency: frames per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-archive", action="store_true", help="NG images not archived")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    bundle = ensure_bundle(args.bundle, args.preset)
    with tempfile.TemporaryDirectory(prefix="aminet-station-bench-") as tmp:
        {"soak": soak, "overhead": overhead, "throughput": throughput, "latency": latency, "web": web}[args.mode](
            args, bundle, Path(tmp))


if __name__ == "__main__":
    main()
