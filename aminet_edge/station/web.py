"""The station's live view: one page (station/page/: HTML, JS, CSS, nothing external), a JSON API and a
server-sent event stream, served by aiohttp in its own thread (`aminet-edge station CONFIG --web HOST:PORT`).

    GET  /                                  the page
    GET  /api/state                         Station.state() + per camera latency p50/p99 (ms), the host's CPU load
    GET  /api/events                        server-sent events, every PUSH_S while a stream is open: `result` (the
                                            latest result of each camera that has a new one), `tile` ({camera, id,
                                            jpeg: its live tile, base64}), `trend` ({camera, points: the results
                                            since the last push}) and, every STATE_S, `state`
    GET  /api/cameras/{camera}/frame.jpg    the live tile: the last pushed frame with its heatmap, TILE_SIDE px
    GET  /api/cameras/{camera}/panels.jpg   the same result full size: frame | heatmap | mask
    GET  /api/cameras/{camera}/trend        the last TREND results: [[id, score, image threshold, decision], ...]
    GET  /api/cameras/{camera}/ng           the last `ng_thumbnails` NG results that have an archived image
    GET  /api/results/{id}/image, /overlay  an archived NG image, its overlay (PNG)
    POST /api/cameras/{camera}/sensitivity  {"sensitivity": s}: Station.set_sensitivity (audited, with the
                                            client's address)
    POST /api/cameras/{camera}/pause, /resume

Changes (POST) need `Authorization: Bearer <[web] token>`: no token sent -> 401, a wrong one -> 403
(compared in constant time), no token configured -> 403 (the page is read-only).

What watching costs the inspection: per frame, the listener keeps a reference to the latest result and
writes one row of numbers (trend, latency) into a preallocated ring, whether or not a page is open; no
wake-up, image or JSON. The server's thread reads those only while an event stream is open, at the page's
display rate (PUSH_S: the latest result wins), once for all the streams, and encodes the tile of each pushed
result once (in one worker thread), from a strided view of the frame at the tile's size; it travels in the
stream, so a browser makes no request per update.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
HISTORY = 1000  # results per camera kept for the trend and behind latency p50 / p99
PUSH_S = 0.5  # the page's display rate: 2 updates a second per camera, the latest result wins
STATE_S = 1.0
TILE_SIDE = 200  # pixels, the longer side of the live tile (the page shows it 200 px high)
CLIENT_LAG = 16  # pushes a slow event stream may fall behind before it is closed (its browser reconnects)
DECISIONS = ("OK", "NG", "ERROR")
_CODES = {d: i for i, d in enumerate(DECISIONS)}
_ROW = np.dtype([("id", np.int64), ("score", np.float64), ("threshold", np.float64), ("decision", np.uint8),
                 ("latency", np.float64)])

Shown = tuple[Frame, Any, dict[str, Any]]  # a frame, its Result (None for an ERROR) and its message


@dataclass
class _View:
    """What the page shows of one camera. `latest`, `history` and `count` are written by the station's
    listener (camera threads, under the station's record lock); the rest by the server's thread."""

    latest: Shown | None = None
    history: np.ndarray = field(default_factory=lambda: np.zeros(HISTORY, _ROW))  # a ring of `count` rows
    count: int = 0
    shown: Shown | None = None  # the result last pushed to the event streams
    pushed: int = 0  # history rows already pushed as trend points
    tile: tuple[int, bytes] | None = None  # (result id, live tile) of `shown`
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one tile encoding at a time

    def rows(self, since: int = 0, limit: int = HISTORY) -> np.ndarray:
        """A copy of the history rows numbered [max(since, count - limit), count), oldest first."""
        end = self.count
        return self.history[np.arange(max(since, end - min(limit, HISTORY)), end) % HISTORY]


def trend_points(rows: np.ndarray) -> list[list[Any]]:
    """History rows -> [[id, score, threshold, decision], ...] (None for a missing score or threshold)."""
    return [[i, None if math.isnan(s) else s, None if math.isnan(t) else t, DECISIONS[d]]
            for i, s, t, d in zip(rows["id"].tolist(), rows["score"].tolist(), rows["threshold"].tolist(),
                                  rows["decision"].tolist())]


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


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
        self._stopping = asyncio.Event()  # replaced in the server's loop
        self._streams: set[asyncio.Queue[bytes | None]] = set()  # one per open event stream
        self._publisher: asyncio.Task[None] | None = None
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
        # one thread encodes (tiles, panels) and applies changes: the view never takes more than one core
        self._loop.set_default_executor(ThreadPoolExecutor(1, thread_name_prefix="aminet-web-worker"))
        self._stopping = asyncio.Event()
        app = web.Application()
        app.add_routes([web.get("/", self._page), web.get("/{name:live\\.(js|css)}", self._page),
                        web.get("/api/state", self._state), web.get("/api/events", self._events),
                        web.get("/api/cameras/{camera}/{kind:frame|panels}.jpg", self._frame),
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
        for stream in list(self._streams):
            _close(stream)
        await runner.cleanup()

    # -- from the camera threads ----------------------------------------------------------------
    def _on_result(self, cam: Camera, frame: Frame, result: Any, message: dict[str, Any]) -> None:
        view = self.views[cam.cfg.name]
        view.latest = (frame, result, message)
        score, latency = message["score"], message["latency_ms"]
        view.history[view.count % HISTORY] = (message["id"], math.nan if score is None else score,
                                              math.nan if result is None else result.thresholds.image,
                                              _CODES[message["decision"]], math.nan if latency is None else latency)
        view.count += 1

    # -- the event streams ----------------------------------------------------------------------
    async def _publish(self) -> None:
        """While event streams are open: every PUSH_S, what changed since the last push (each camera's latest
        result and its tile, its trend points) and every STATE_S the health, made once and queued to every
        stream."""
        for view in self.views.values():
            view.pushed = view.count  # a stream opening fetches the trend so far
        next_state = time.monotonic() + STATE_S
        while self._streams and not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), PUSH_S)
                return
            except asyncio.TimeoutError:
                pass
            chunks = [await self._news(name, view) for name, view in self.views.items()]
            if time.monotonic() >= next_state:
                next_state = time.monotonic() + STATE_S
                chunks.append(_event("state", self.health()))
            data = b"".join(chunks)
            for stream in list(self._streams) if data else []:
                try:
                    stream.put_nowait(data)
                except asyncio.QueueFull:  # a client that does not read: closed (an EventSource reconnects)
                    self._streams.discard(stream)
                    _close(stream)

    async def _news(self, name: str, view: _View) -> bytes:
        """The `result`, `tile` and `trend` events of camera `name` since the last push (b"" if none)."""
        out = b""
        latest = view.latest
        if latest is not None and (view.shown is None or view.shown[2]["id"] != latest[2]["id"]):
            view.shown = latest
            out += _event("result", latest[2])
            if latest[0].image is not None:  # the tile travels with the event: no request per update
                try:
                    tile = await self._tile(view, latest)
                except Exception as exc:  # noqa: BLE001 - e.g. a watched folder's file removed: the page keeps its tile
                    log.warning("camera %s: no live tile for result %d: %s", name, latest[2]["id"], exc)
                else:
                    out += _event("tile", {"camera": name, "id": latest[2]["id"],
                                           "jpeg": base64.b64encode(tile).decode()})
        count = view.count
        if count > view.pushed:
            out += _event("trend", {"camera": name, "points": trend_points(view.rows(view.pushed, TREND))})
            view.pushed = count
        return out

    async def _tile(self, view: _View, shown: Shown) -> bytes:
        """The live tile of `shown`, encoded once (in the worker thread) however many ask for it."""
        async with view.lock:
            if view.tile is None or view.tile[0] != shown[2]["id"]:
                tile = await asyncio.get_running_loop().run_in_executor(None, tile_jpeg, shown[0], shown[1])
                view.tile = (shown[2]["id"], tile)
            return view.tile[1]

    async def _events(self, request: Any) -> Any:
        resp = self.web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        stream: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_LAG)
        greeting = [_event("state", self.health())]
        for view in self.views.values():
            if view.shown is None:
                view.shown = view.latest
            if view.shown is not None:
                greeting.append(_event("result", view.shown[2]))
        self._streams.add(stream)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish())
        try:
            data: bytes | None = b"".join(greeting)
            while data is not None and not self._stopping.is_set():
                await resp.write(data)
                data = await stream.get()
        except (ConnectionResetError, RuntimeError):  # the browser went away
            pass
        finally:
            self._streams.discard(stream)
        return resp

    # -- handlers -------------------------------------------------------------------------------
    async def _page(self, request: Any) -> Any:
        name = request.match_info.get("name", "index.html")
        return self.web.FileResponse(PAGE / name, headers={"Content-Type": PAGE_FILES[name],
                                                           "Cache-Control": "no-cache"})

    def health(self) -> dict[str, Any]:
        """Station.state() plus latency p50/p99 per camera and the CPU load (JSON-ready)."""
        state = self.station.state()
        for name, cam in state["cameras"].items():
            lat = self.views[name].rows()["latency"]
            lat = lat[~np.isnan(lat)]
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

    def _view(self, request: Any) -> tuple[str, _View]:
        name = request.match_info["camera"]
        if name not in self.views:
            raise self.web.HTTPNotFound(text=f"no camera named {name!r}")
        return name, self.views[name]

    async def _frame(self, request: Any) -> Any:
        """The live tile of the result last pushed (or the latest), or (panels.jpg) that result full size."""
        _, view = self._view(request)
        shown = view.shown or view.latest
        if shown is None or shown[0].image is None:
            raise self.web.HTTPNotFound(text="no frame yet")
        frame, result, message = shown
        if request.match_info["kind"] == "panels":
            data = await asyncio.get_running_loop().run_in_executor(None, panels_jpeg, frame, result)
        else:
            data = await self._tile(view, shown)
        return self.web.Response(body=data, content_type="image/jpeg",
                                 headers={"Cache-Control": "no-store", "X-Result-Id": str(message["id"])})

    async def _trend(self, request: Any) -> Any:
        _, view = self._view(request)
        return self.web.json_response(trend_points(view.rows(0, TREND)))

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


def _close(stream: asyncio.Queue[bytes | None]) -> None:
    """End an event stream: what it still holds is dropped, then the end mark."""
    while not stream.empty():
        stream.get_nowait()
    stream.put_nowait(None)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tile_jpeg(frame: Frame, result: Any, side: int = TILE_SIDE) -> bytes:
    """JPEG of the frame with its heatmap blended over it (the frame alone for a result without map), the
    longer side `side` px at most. An array frame is first subsampled by an integer step to no less than
    `side` px on its shorter side, so the cost follows the tile's size, not the camera's."""
    from aminet_edge.data.images import resize_plane, resize_rgb
    from aminet_edge.evaluation.heatmaps import heat_blend
    from aminet_edge.station.archive import frame_rgb

    image = frame.image
    full = np.shape(image)[:2] if isinstance(image, np.ndarray) else None
    step = max(1, min(full) // side) if full else 1
    rgb = frame_rgb(image[::step, ::step] if step > 1 else image, frame.bgr)
    amap = None if result is None else result.anomaly_map
    amap = amap[::step, ::step] if amap is not None and amap.shape == (full or rgb.shape[:2]) else None
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        rgb = resize_rgb(rgb, hw)
        amap = None if amap is None else resize_plane(amap, hw)
    if amap is not None:
        rgb = heat_blend(rgb, amap, 0.0, 2.0 * result.thresholds.pixel)
    return _jpeg((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), 80)


def panels_jpeg(frame: Frame, result: Any) -> bytes:
    """JPEG of frame | heatmap | mask (`result_overlay`, full size up to its limit; the frame alone for a
    result without map)."""
    from aminet_edge.evaluation.heatmaps import result_overlay
    from aminet_edge.station.archive import frame_rgb

    rgb = frame_rgb(frame.image, frame.bgr)
    if result is not None and result.anomaly_map is not None and result.anomaly_map.shape == rgb.shape[:2]:
        return _jpeg(result_overlay(rgb, result), 90)
    return _jpeg((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), 90)
