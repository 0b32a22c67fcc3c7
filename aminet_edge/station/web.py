"""The station's live view: one page (station/page/: HTML, JS, CSS, nothing external), a JSON API and a
server-sent event stream, served by aiohttp in its own thread (`aminet-edge station CONFIG --web HOST:PORT`).

    GET  /                                  the page
    GET  /api/state                         Station.state() + per camera latency p50/p99 (ms), the host's CPU load
    GET  /api/events                        server-sent events: `result` (a camera's latest message, at most one
                                            per camera every PUSH_S) and `state` (every STATE_S)
    GET  /api/cameras/{camera}/frame.jpg    the latest frame | heatmap over it | mask (JPEG, made on request)
    GET  /api/cameras/{camera}/trend        the last TREND results: [[id, score, image threshold, decision], ...]
    GET  /api/cameras/{camera}/ng           the last `ng_thumbnails` NG results that have an archived image
    GET  /api/results/{id}/image, /overlay  an archived NG image, its overlay (PNG)
    POST /api/cameras/{camera}/sensitivity  {"sensitivity": s}: Station.set_sensitivity (audited, with the
                                            client's address)
    POST /api/cameras/{camera}/pause, /resume

Changes (POST) need `Authorization: Bearer <[web] token>`: no token sent -> 401, a wrong one -> 403
(compared in constant time), no token configured -> 403 (the page is read-only). The view costs the
inspection one listener call per frame (a few references kept, an event flagged); images are encoded only
when a browser asks for them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aminet_edge.station.config import WebConfig
from aminet_edge.station.station import Camera, Station
from aminet_edge.station.sources import Frame

log = logging.getLogger("aminet_edge.station")

PAGE = Path(__file__).with_name("page")
PAGE_FILES = {"index.html": "text/html", "live.js": "text/javascript", "live.css": "text/css"}
TREND = 300  # results per camera in the score trend
LATENCIES = 1000  # results per camera behind latency p50 / p99
PUSH_S = 0.25  # a person reads 4 updates a second per camera; each costs the station a frame encoding
STATE_S = 1.0
FRAME_SIDE = 192  # pixels, the longer side of each panel of the live frame (the page shows ~200)


@dataclass
class _View:
    """What the page shows of one camera, updated by the station's listener (camera threads)."""

    frame: Frame | None = None
    result: Any = None
    message: dict[str, Any] | None = None
    trend: deque[tuple[int, float | None, float | None, str]] = field(default_factory=lambda: deque(maxlen=TREND))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCIES))
    jpeg: tuple[int, bytes] | None = None  # (result id, encoded frame) of the last frame asked for


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`, or `:PORT` for 127.0.0.1) -> (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:8090")
    return host.strip("[]") or "127.0.0.1", int(port)


class LiveView:
    """The live view of `station` at cfg.host:cfg.port; `start()` serves in a thread, `stop()` ends it.
    `url` is where it listens once started (port 0 picks a free one)."""

    def __init__(self, station: Station, cfg: WebConfig) -> None:
        try:
            from aiohttp import web
        except ImportError as exc:
            raise ImportError("the live view needs aiohttp: pip install 'aminet-edge[station]'") from exc
        self.station, self.cfg, self.web = station, cfg, web
        self.views = {name: _View() for name in station.cameras}
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # both replaced in the server's loop
        self._stopping = asyncio.Event()
        self._flagged = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="aminet-web", daemon=True)
        self._cpu = (time.monotonic(), time.process_time())
        station.add_listener(self._on_result)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "LiveView":
        """Bind and serve; OSError when the address cannot be bound."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise OSError(f"the live view cannot listen on {self.cfg.host}:{self.cfg.port}: {self._error}")
        log.info("station: live view at %s", self.url)
        return self

    def stop(self) -> None:
        """Close the event streams and the server; the station goes on without the view."""
        self.station.remove_listener(self._on_result)
        loop, self._loop = self._loop, None
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        web = self.web
        self._loop = asyncio.get_running_loop()
        self._changed, self._stopping = asyncio.Event(), asyncio.Event()
        app = web.Application()
        app.add_routes([web.get("/", self._page), web.get("/{name:live\\.(js|css)}", self._page),
                        web.get("/api/state", self._state), web.get("/api/events", self._events),
                        web.get("/api/cameras/{camera}/frame.jpg", self._frame),
                        web.get("/api/cameras/{camera}/trend", self._trend),
                        web.get("/api/cameras/{camera}/ng", self._ng),
                        web.get("/api/results/{id:\\d+}/{kind:image|overlay}", self._archived),
                        web.post("/api/cameras/{camera}/sensitivity", self._sensitivity),
                        web.post("/api/cameras/{camera}/{action:pause|resume}", self._pause)])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.cfg.host, self.cfg.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the bound port (0 = any)
            host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
            self.url = f"http://{host}:{port}/"
        except OSError as exc:
            self._error = exc
            await runner.cleanup()
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        self._changed.set()  # wakes the event streams, which see _stopping and end
        await runner.cleanup()

    # -- from the camera threads ----------------------------------------------------------------
    def _on_result(self, cam: Camera, frame: Frame, result: Any, message: dict[str, Any]) -> None:
        view = self.views[cam.cfg.name]
        view.frame, view.result, view.message = frame, result, message
        threshold = None if result is None else float(result.thresholds.image)
        view.trend.append((message["id"], message["score"], threshold, message["decision"]))
        if message["latency_ms"] is not None:
            view.latencies.append(message["latency_ms"])
        loop = self._loop
        if not self._flagged and loop is not None:
            self._flagged = True
            loop.call_soon_threadsafe(self._flag)

    def _flag(self) -> None:
        """Wake every event stream waiting (each waits on the event it saw; the next ones get a new one)."""
        self._flagged = False
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- handlers -------------------------------------------------------------------------------
    async def _page(self, request: Any) -> Any:
        name = request.match_info.get("name", "index.html")
        return self.web.FileResponse(PAGE / name, headers={"Content-Type": PAGE_FILES[name],
                                                           "Cache-Control": "no-cache"})

    def health(self) -> dict[str, Any]:
        """Station.state() plus latency p50/p99 per camera and the CPU load (JSON-ready)."""
        state = self.station.state()
        for name, cam in state["cameras"].items():
            lat = np.asarray(self.views[name].latencies, dtype=np.float64)
            cam["latency_ms"] = ({"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}
                                 if lat.size else None)
        now, used = time.monotonic(), time.process_time()
        then, used_then = self._cpu
        self._cpu = (now, used)
        cores = os.cpu_count() or 1
        state["host"] = {"cpu_count": cores, "load_1min": os.getloadavg()[0],
                         "station_cpu_percent": 100.0 * (used - used_then) / max(now - then, 1e-6) / cores}
        state["web"] = {"writable": bool(self.cfg.token), "ng_thumbnails": self.cfg.ng_thumbnails}
        return state

    async def _state(self, request: Any) -> Any:
        return self.web.json_response(self.health())

    async def _events(self, request: Any) -> Any:
        resp = self.web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent: dict[str, int] = {}
        next_state = 0.0
        try:
            while not self._stopping.is_set():
                changed = self._changed  # a result recorded from here on sets it
                for name, view in self.views.items():
                    if view.message is not None and sent.get(name) != view.message["id"]:
                        sent[name] = view.message["id"]
                        await resp.write(f"event: result\ndata: {json.dumps(view.message)}\n\n".encode())
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + STATE_S
                    await resp.write(f"event: state\ndata: {json.dumps(self.health())}\n\n".encode())
                try:
                    await asyncio.wait_for(changed.wait(), STATE_S)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(PUSH_S)  # at most one push per PUSH_S, whatever the frame rate
        except (ConnectionResetError, RuntimeError):  # the browser went away
            pass
        return resp

    def _view(self, request: Any) -> tuple[str, _View]:
        name = request.match_info["camera"]
        if name not in self.views:
            raise self.web.HTTPNotFound(text=f"no camera named {name!r}")
        return name, self.views[name]

    async def _frame(self, request: Any) -> Any:
        _, view = self._view(request)
        frame, result, message = view.frame, view.result, view.message
        if frame is None or frame.image is None or message is None:
            raise self.web.HTTPNotFound(text="no frame yet")
        if view.jpeg is None or view.jpeg[0] != message["id"]:
            data = await asyncio.get_running_loop().run_in_executor(None, _encode_frame, frame, result)
            view.jpeg = (message["id"], data)
        return self.web.Response(body=view.jpeg[1], content_type="image/jpeg",
                                 headers={"Cache-Control": "no-store", "X-Result-Id": str(view.jpeg[0])})

    async def _trend(self, request: Any) -> Any:
        _, view = self._view(request)
        return self.web.json_response(list(view.trend))

    async def _ng(self, request: Any) -> Any:
        name, _ = self._view(request)
        rows = self.station.store.last_ng(name, self.cfg.ng_thumbnails)
        return self.web.json_response([{k: r[k] for k in ("id", "part_id", "time", "score", "normalized")}
                                       for r in rows])

    async def _archived(self, request: Any) -> Any:
        row = self.station.store.row(int(request.match_info["id"]))
        if row is None or not row["image_path"]:
            raise self.web.HTTPNotFound(text="no archived image for this result")
        path = Path(row["image_path"])
        if request.match_info["kind"] == "overlay":
            path = path.with_name(f"{path.stem}_overlay.png")
        if not path.resolve().is_relative_to(self.station.archive.root) or not path.is_file():
            raise self.web.HTTPNotFound(text="the archived image is gone (retention, or not written yet)")
        return self.web.FileResponse(path, headers={"Content-Type": "image/png"})

    def _authorize(self, request: Any) -> None:
        sent = request.headers.get("Authorization", "")
        if not sent.startswith("Bearer "):
            raise self.web.HTTPUnauthorized(text="this change needs the token: Authorization: Bearer <token>",
                                            headers={"WWW-Authenticate": "Bearer"})
        if not self.cfg.token:
            raise self.web.HTTPForbidden(text="the live view is read-only: no [web] token is configured")
        if not hmac.compare_digest(sent[len("Bearer "):].encode(), self.cfg.token.encode()):
            raise self.web.HTTPForbidden(text="wrong token")

    async def _sensitivity(self, request: Any) -> Any:
        self._authorize(request)
        name, _ = self._view(request)
        try:
            body = await request.json()
            value = body["sensitivity"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"sensitivity must be a number in [0, 1], got {value!r}")
            old, new = await asyncio.get_running_loop().run_in_executor(
                None, self.station.set_sensitivity, name, float(value), request.remote or "unknown")
        except (ValueError, KeyError, TypeError) as exc:
            raise self.web.HTTPBadRequest(text=str(exc) if not isinstance(exc, KeyError)
                                          else 'send {"sensitivity": <number in [0, 1]>}') from exc
        return self.web.json_response({"camera": name, "old": old, "new": new})

    async def _pause(self, request: Any) -> Any:
        self._authorize(request)
        name, _ = self._view(request)
        action = request.match_info["action"]
        (self.station.pause if action == "pause" else self.station.resume)(name)
        log.info("camera %s: %sd from %s", name, action, request.remote)
        return self.web.json_response({"camera": name, "paused": action == "pause"})


def _encode_frame(frame: Frame, result: Any) -> bytes:
    """JPEG of the frame | heatmap | mask panels (the frame alone for a result without map)."""
    import io

    from PIL import Image

    from aminet_edge.evaluation.heatmaps import result_overlay
    from aminet_edge.station.archive import frame_rgb

    rgb = frame_rgb(frame.image, frame.bgr)
    if result is not None and result.anomaly_map is not None and result.anomaly_map.shape == rgb.shape[:2]:
        pixels = result_overlay(rgb, result, max_side=FRAME_SIDE)
    else:
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
        img.thumbnail((FRAME_SIDE, FRAME_SIDE))
        pixels = np.asarray(img)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()
