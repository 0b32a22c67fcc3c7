"""Frame sources of a camera: a watched folder, a video file, an RTSP / USB stream (OpenCV), a GenICam
camera (GigE Vision / USB3 Vision, through Aravis).

A source hands out `Grab`s (the image plus what it was); the camera turns each into a `Frame` with a part
id and a timestamp: from the trigger in software-trigger mode, else from the grab (file stem, frame number,
a GenICam camera's frame id) and the grab's own time when it has one (else the acquisition time). `grab(timeout)` returns None when nothing came within `timeout` seconds;
`exhausted` turns True when no frame will ever come (the end of a video file that does not loop). A source
that fails raises OSError; the camera then closes it and opens it again with back-off. A source that cannot
work as configured (a camera without the trigger feature or line asked for) raises `SourceRefused`: the
camera stops, reporting why, since retrying cannot help.

OpenCV (`opencv-python-headless`, ~50 MB) is used for video and streams: it decodes files, RTSP and USB
(V4L2) cameras in one wheel; PyAV is smaller but has no USB capture on Linux without FFmpeg's v4l2 build.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aminet_edge.station.config import CameraConfig, SourceConfig


@dataclass(frozen=True)
class Grab:
    """One acquired image: a file path or an (H, W, 3) uint8 array (`bgr`: OpenCV channel order),
    `ref` what it is (a path, "video.mp4#17"), `part_id` the id it carries when no trigger gives one and
    `time` when it was taken (epoch s; None: the station takes the time it received it)."""

    image: Any
    ref: str
    part_id: str
    bgr: bool = False
    time: float | None = None


@dataclass(frozen=True)
class Frame:
    """A grab on its way through the station: with the part id and time (epoch s) from its trigger, and
    the trigger's origin (free-run, hardware, api, opcua, modbus). `image` None: the trigger got no frame (`error`)."""

    image: Any
    ref: str
    part_id: str
    time: float
    origin: str
    bgr: bool = False
    error: str | None = None


class SourceRefused(Exception):
    """The source cannot work as configured (e.g. the camera lacks a feature); the message names it."""


class Source(Protocol):
    exhausted: bool

    def open(self) -> None: ...

    def grab(self, timeout: float) -> Grab | None: ...

    def close(self) -> None: ...


class FolderSource:
    """Images appearing in a folder (matching `pattern`), each taken once when its size and mtime have
    stayed unchanged for `settle` seconds, oldest first. `done`: refs already inspected (from the store),
    skipped. Files are only read, never moved or deleted."""

    def __init__(self, cfg: SourceConfig, done: set[str] | None = None) -> None:
        self.folder, self.pattern, self.settle, self.poll = Path(cfg.path), cfg.pattern, cfg.settle, cfg.poll
        self.done = set(done or ())
        self.exhausted = False
        self._seen: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen unchanged)
        self._ready: list[str] = []

    def open(self) -> None:
        if not self.folder.is_dir():
            raise OSError(f"{self.folder}: the watched folder is missing")

    def close(self) -> None:
        self._seen.clear()
        self._ready.clear()

    def _scan(self) -> None:
        now = time.monotonic()
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise OSError(f"{self.folder}: cannot list the watched folder ({exc.strerror or exc})") from exc
        found = []
        for e in entries:
            if e.name.startswith(".") or not fnmatch.fnmatch(e.name, self.pattern) or e.path in self.done:
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            if not e.is_file():
                continue
            key = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(e.path)
            if prev is None or prev[:2] != key:
                self._seen[e.path] = (*key, now)
                prev = self._seen[e.path]
            if st.st_size > 0 and now - prev[2] >= self.settle:
                found.append((st.st_mtime_ns, e.name, e.path))
        self._ready = [p for _, _, p in sorted(found)]

    def grab(self, timeout: float) -> Grab | None:
        deadline = time.monotonic() + timeout
        while True:
            if not self._ready:
                self._scan()
            if self._ready:
                path = self._ready.pop(0)
                self.done.add(path)
                self._seen.pop(path, None)
                return Grab(path, path, Path(path).stem)
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("video and stream sources need OpenCV (pip install 'aminet-edge[station]')") from exc
    return cv2


class VideoSource:
    """Frames of a video file in order (`loop`: start again at the end), or of a live stream (RTSP/HTTP
    URL, or a USB camera index): a stream that stops delivering raises OSError (reconnect)."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.path, self.loop, self.live = cfg.path, cfg.loop, cfg.type == "stream"
        self.exhausted = False
        self._cap: Any = None
        self._index = 0
        self._stem = "camera" if self.live else Path(cfg.path).stem

    def open(self) -> None:
        cv2 = _cv2()
        target: Any = int(self.path) if self.live and self.path.isdigit() else self.path
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"{self.path}: cannot open the {'stream' if self.live else 'video'}")
        self._cap = cap

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def grab(self, timeout: float) -> Grab | None:
        if self._cap is None:
            raise OSError(f"{self.path}: not open")
        ok, frame = self._cap.read()
        if not ok and not self.live and self.loop and self._index:
            self._cap.set(_cv2().CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok:
            if self.live:
                raise OSError(f"{self.path}: the stream delivered no frame")
            self.exhausted = True
            return None
        n = self._index
        self._index += 1
        return Grab(frame, f"{self.path}#{n}", f"{self._stem}-{n:06d}", bgr=True)


def _aravis() -> tuple[Any, Any]:
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        raise ImportError("GenICam cameras need Aravis 0.8 and PyGObject (Debian: apt install gir1.2-aravis-0.8 "
                          "libgirepository1.0-dev libcairo2-dev; pip install 'PyGObject<3.51')") from exc
    return Aravis, GLib


_ARAVIS_BUFFERS = 8


class GenICamSource:
    """A GenICam camera through Aravis: `path` is its device id as Aravis lists it (e.g.
    "Basler-21234567", `arv-tool-0.8` prints them; "" = the first camera found). Pixel formats Mono8,
    Mono16 and RGB8 (set the camera's PixelFormat beforehand; Bayer formats are refused). `trigger`:
    free-run: the camera's continuous acquisition, triggers off; software: TriggerSoftware, one frame per
    grab; hardware: FrameStart triggered by the input `line` (its TriggerSource) on the `activation` edge
    ("" = the camera's setting), each frame taken as the camera sends it, part id = the buffer's frame id,
    time = the buffer's system timestamp (the host's clock when its first packet arrived), and the camera's
    own timestamp (ns of its clock) kept in the ref. A camera whose control connection is lost raises
    OSError (the station reconnects); one without the trigger features or line raises SourceRefused."""

    FORMATS = {"Mono8": (np.uint8, 1), "Mono16": (np.uint16, 1), "RGB8": (np.uint8, 3)}

    def __init__(self, cfg: SourceConfig, trigger: str = "free-run", line: str = "", activation: str = "") -> None:
        self.device, self.trigger, self.line, self.activation = cfg.path, trigger, line, activation
        self.exhausted = False
        self._camera: Any = None
        self._stream: Any = None
        self._lost = False
        self._count = 0

    def open(self) -> None:
        aravis, glib = _aravis()
        try:
            aravis.update_device_list()
            camera = aravis.Camera.new(self.device or None)
            fmt = camera.get_pixel_format_as_string()
            if fmt not in self.FORMATS:
                raise OSError(f"GenICam camera {self.device!r}: pixel format {fmt} is not supported "
                              f"(use {', '.join(self.FORMATS)})")
            if self.trigger == "software":
                camera.set_trigger("Software")
            elif self.trigger == "hardware":
                self._line_trigger(camera, aravis)
            else:  # triggers off (a previous run may have left TriggerSoftware on): the camera's frame rate
                camera.clear_triggers()
                camera.set_acquisition_mode(aravis.AcquisitionMode.CONTINUOUS)
            stream = camera.create_stream(None, None)
            for _ in range(_ARAVIS_BUFFERS):
                stream.push_buffer(aravis.Buffer.new_allocate(camera.get_payload()))
            self._lost = False
            camera.get_device().connect("control-lost", lambda *_: setattr(self, "_lost", True))
            camera.start_acquisition()
        except glib.Error as exc:
            raise OSError(f"GenICam camera {self.device or '(first found)'}: {exc.message}") from exc
        self._camera, self._stream, self._format = camera, stream, self.FORMATS[fmt]

    def _line_trigger(self, camera: Any, aravis: Any) -> None:
        """Frame start on a pulse of `self.line`; SourceRefused names the feature or entry the camera lacks,
        or the one that did not read back as written."""
        wanted = {"TriggerSelector": "FrameStart", "TriggerMode": "On", "TriggerSource": self.line}
        if self.activation:
            wanted["TriggerActivation"] = self.activation
        where = f"GenICam camera {self.device or '(first found)'}"
        for feature, value in wanted.items():
            if not camera.is_feature_available(feature):
                raise SourceRefused(f"{where} has no {feature} feature, needed for trigger = \"hardware\"")
            entries = camera.dup_available_enumerations_as_strings(feature)
            if value not in entries:
                raise SourceRefused(f"{where}: {feature} has no entry {value!r} (it offers {', '.join(entries)})")
        camera.clear_triggers()  # e.g. an AcquisitionStart trigger left on by other software
        for feature, value in wanted.items():
            camera.set_string(feature, value)
        for feature, value in wanted.items():
            if (got := camera.get_string(feature)) != value:
                raise SourceRefused(f"{where}: {feature} reads back {got!r} after writing {value!r}")
        camera.set_acquisition_mode(aravis.AcquisitionMode.CONTINUOUS)

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop_acquisition()
            except Exception:  # noqa: BLE001 - a camera already gone
                pass
        self._camera = self._stream = None

    def grab(self, timeout: float) -> Grab | None:
        if self._camera is None or self._lost:
            raise OSError(f"GenICam camera {self.device or '(first found)'}: control connection lost")
        aravis, glib = _aravis()
        try:
            if self.trigger == "software":
                self._camera.software_trigger()
            buf = self._stream.timeout_pop_buffer(int(timeout * 1e6))
        except glib.Error as exc:
            raise OSError(f"GenICam camera {self.device}: {exc.message}") from exc
        if buf is None:
            return None
        try:
            if buf.get_status() != aravis.BufferStatus.SUCCESS:
                return None  # an incomplete frame (lost packets): no image this time
            dtype, channels = self._format
            h, w = buf.get_image_height(), buf.get_image_width()
            shape = (h, w, channels) if channels > 1 else (h, w)
            image = np.frombuffer(buf.get_data(), dtype=dtype)[:h * w * channels].reshape(shape).copy()
            frame_id, camera_ns, host_ns = buf.get_frame_id(), buf.get_timestamp(), buf.get_system_timestamp()
        finally:
            self._stream.push_buffer(buf)
        self._count += 1
        name = self.device or "genicam"
        part_id = str(frame_id) if self.trigger == "hardware" else f"{name}-{self._count:06d}"
        return Grab(image, f"{name}#{frame_id}@{camera_ns}", part_id, time=host_ns / 1e9 if host_ns else None)


def make_source(cam: CameraConfig, done: set[str] | None = None) -> Source:
    """The source of camera `cam` (`cam.source.type`); `done` = refs already in the store (a folder skips
    them). A GenICam camera is set up for `cam.trigger` (free-run, software, or hardware on `trigger_line`)."""
    cfg = cam.source
    if cfg.type == "folder":
        return FolderSource(cfg, done)
    if cfg.type == "genicam":
        return GenICamSource(cfg, cam.trigger, cam.trigger_line, cam.trigger_activation)
    return VideoSource(cfg)
