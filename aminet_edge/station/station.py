"""`Station`: cameras in, OK/NG out. Per camera two threads and a bounded queue between them:

    source --grab--> [acquire thread] --Frame--> queue (bounded) --> [inspect thread] --> Detector.predict
        --> Record --> result store (+ NG archive) --> each output (MQTT, webhook: on-disk outbox;
                                                                OPC UA, Modbus: last-result state)

- free-run: the acquire thread takes every frame the source gives; software trigger: one frame per
  `Station.trigger(camera, part_id)` (the OPC UA / Modbus handshakes call it), carrying its part id and time;
  hardware trigger: every frame the GenICam camera sends on its line pulses, with the camera's frame id and time.
- Back-pressure when the queue is full: "block" (acquisition waits) or "drop-oldest" (the oldest waiting
  frame is dropped, counted and recorded as an ERROR result, so a triggered part still gets an answer).
- A frame that cannot be used (unreadable, wrong size, model failure) gives an ERROR result, never a crash.
- A source that fails is closed and opened again with back-off (0.5 s doubling to 30 s), reported in
  `state()["cameras"][name]["source"]` and counted in `reconnects`.
- `stop()` (SIGTERM in the CLI): acquisition stops, every frame already acquired is inspected and stored,
  the outputs get `flush_timeout` seconds to deliver their queues (what is left stays on disk for the
  next start), then everything closes. A restart resumes: counters come from the store, a folder source
  skips the files the store already has, the outboxes send what they still hold.

`state()` is the per-camera and per-output state a status view polls (a plain dict, JSON-ready);
`add_listener` gives a view each frame's outcome as it is recorded (the live view, station/web.py).
`pause` / `resume` a camera (a paused free-run camera grabs nothing; a paused triggered one answers
each trigger, software or hardware, with an ERROR result), `set_sensitivity` changes a camera's decision rule at once,
keeps it in the bundle's calibration and audits it in the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from aminet_edge.station.archive import NgArchive
from aminet_edge.station.config import CameraConfig, StationConfig
from aminet_edge.station.sources import Frame, Source, SourceRefused, make_source
from aminet_edge.station.store import Record, ResultStore

log = logging.getLogger("aminet_edge.station")

RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
_POLL_S = 0.1  # how often idle threads look at the stop flag


class Output(Protocol):
    """What the station needs of an output (mqtt, webhook, opcua, modbus)."""

    def start(self) -> None: ...

    def publish(self, message: dict[str, Any]) -> None: ...  # returns at once

    def flush(self, timeout: float) -> bool: ...

    def stop(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


def load_detector(cam: CameraConfig) -> Any:
    """The camera's Detector (bundle) or RemoteDetector (Triton url)."""
    if cam.url is not None:
        from aminet_edge.serving import RemoteDetector

        return RemoteDetector(cam.url, threshold=cam.threshold,
                              sensitivity=0.5 if cam.sensitivity is None else cam.sensitivity)
    from aminet_edge.bundle import read_config
    from aminet_edge.runtime import Detector

    assert cam.bundle is not None  # config: exactly one of bundle / url
    sensitivity = cam.sensitivity
    if sensitivity is None:  # the value last set on the line (live view), kept in the bundle's calibration
        calibration = read_config(cam.bundle).calibration
        sensitivity = 0.5 if calibration is None else calibration.sensitivity
    return Detector.load(cam.bundle, backend=cam.backend, device=cam.device, threshold=cam.threshold,
                         sensitivity=sensitivity)


def weights_sha256(detector: Any) -> str:
    """The sha256 of the bundle weights a (Remote)Detector's model was made from ("" if unrecorded)."""
    return str(getattr(detector, "config", None) and detector.config.artifacts.get("weights", {}).get("sha256", ""))


class Camera:
    """One camera's source, queue, threads and counters (created by Station)."""

    def __init__(self, cfg: CameraConfig, detector: Any, source: Source, station: "Station") -> None:
        self.cfg, self.detector, self.source, self.station = cfg, detector, source, station
        self.weights = weights_sha256(detector)
        self.counts = station.store.counts(cfg.name)
        self.dropped = 0
        self.reconnects = 0
        self.source_status = "starting"
        self.last: dict[str, Any] | None = None
        self.paused = False
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._triggers: queue.Queue[tuple[str | None, float, str]] = queue.Queue()
        self._acquiring = True
        self._threads = [threading.Thread(target=self._acquire, name=f"aminet-acquire-{cfg.name}", daemon=True),
                         threading.Thread(target=self._inspect_loop, name=f"aminet-inspect-{cfg.name}", daemon=True)]

    @property
    def finished(self) -> bool:
        """Acquisition ended (stopped or source exhausted) and every frame was inspected."""
        return not any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            if t.ident is not None:  # a station stopped before it started has nothing to wait for
                t.join(timeout)

    def trigger(self, part_id: str | None, origin: str) -> None:
        """Request one frame (software trigger); time is taken now."""
        if self.cfg.trigger != "software":
            raise ValueError(f"camera {self.cfg.name!r} has trigger = \"{self.cfg.trigger}\": it takes no software "
                             "trigger")
        self._triggers.put((part_id, time.time(), origin))

    def state(self) -> dict[str, Any]:
        with self._cond:
            waiting = len(self._frames)
        thresholds = getattr(self.detector, "thresholds", None)
        return {"source": self.source_status, "trigger": self.cfg.trigger, "queued": waiting,
                "counts": dict(self.counts), "dropped": self.dropped, "reconnects": self.reconnects,
                "last": self.last, "paused": self.paused, "backend": str(getattr(self.detector, "backend", "")),
                "model": self.cfg.bundle or self.cfg.url, "sensitivity": getattr(self.detector, "sensitivity", None),
                "threshold": None if thresholds is None else thresholds.image}

    # -- acquisition ----------------------------------------------------------------------------
    def _acquire(self) -> None:
        stop = self.station._stopping
        opened, backoff = False, RECONNECT_FIRST_S
        try:
            while not stop.is_set():
                if not opened:
                    try:
                        self.source.open()
                    except SourceRefused as exc:
                        self.source_status = f"refused: {exc}"
                        log.error("camera %s: %s", self.cfg.name, self.source_status)
                        return
                    except (OSError, ImportError) as exc:
                        self._source_failed(exc, backoff)
                        stop.wait(backoff)
                        backoff = min(2 * backoff, RECONNECT_MAX_S)
                        continue
                    opened, backoff, self.source_status = True, RECONNECT_FIRST_S, "running"
                if self.paused and self.cfg.trigger == "free-run":
                    stop.wait(_POLL_S)
                    continue
                try:
                    if self.source.exhausted or not self._step():
                        if self.source.exhausted:
                            self.source_status = "finished"
                            return
                except OSError as exc:
                    self.source.close()
                    opened = False
                    self._source_failed(exc, backoff)
                    stop.wait(backoff)
                    backoff = min(2 * backoff, RECONNECT_MAX_S)
        finally:
            self.source.close()
            with self._cond:
                self._acquiring = False
                self._cond.notify_all()

    def _source_failed(self, exc: BaseException, backoff: float) -> None:
        self.reconnects += 1
        self.source_status = f"reconnecting in {backoff:g} s: {exc}"
        log.warning("camera %s: %s", self.cfg.name, self.source_status)

    def _step(self) -> bool:
        """Acquire one frame (free-run, hardware trigger) or serve one software trigger; False when there was
        nothing to do."""
        if self.cfg.trigger != "software":
            grab = self.source.grab(_POLL_S)
            if grab is None:
                return False
            when, origin = grab.time or time.time(), self.cfg.trigger
            if self.paused:  # hardware trigger (a paused free-run camera grabs nothing): the part gets an answer
                self._put(Frame(None, grab.ref, grab.part_id, when, origin, error="the camera is paused"))
            else:
                self._put(Frame(grab.image, grab.ref, grab.part_id, when, origin, grab.bgr))
            return True
        try:
            part_id, when, origin = self._triggers.get(timeout=_POLL_S)
        except queue.Empty:
            return False
        no_frame_id = part_id or f"{self.cfg.name}-{int(when * 1000)}"  # a trigger without id, and no frame
        if self.paused:
            self._put(Frame(None, "trigger", no_frame_id, when, origin, error="the camera is paused"))
            return True
        try:
            grab = self.source.grab(self.cfg.grab_timeout)
        except OSError as exc:  # the trigger still gets its answer, then the source is reopened
            self._put(Frame(None, "trigger", no_frame_id, when, origin, error=f"the source failed: {exc}"))
            raise
        if grab is None:
            error = f"no frame from the source within {self.cfg.grab_timeout:g} s of the trigger"
            self._put(Frame(None, "trigger", no_frame_id, when, origin, error=error))
        else:
            self._put(Frame(grab.image, grab.ref, part_id or grab.part_id, when, origin, grab.bgr))
        return True

    def _put(self, frame: Frame) -> None:
        dropped: list[Frame] = []
        with self._cond:
            if self.cfg.backpressure == "block":
                while len(self._frames) >= self.cfg.queue and not self.station._stopping.is_set():
                    self._cond.wait(_POLL_S)
            else:
                while len(self._frames) >= self.cfg.queue:
                    dropped.append(self._frames.popleft())
                    self.dropped += 1
            self._frames.append(frame)
            self._cond.notify_all()
        for old in dropped:
            self.station._record(self, old, None, "dropped: the camera's queue was full (backpressure = drop-oldest)")

    # -- inspection -----------------------------------------------------------------------------
    def _inspect_loop(self) -> None:
        while True:
            with self._cond:
                while not self._frames and self._acquiring:
                    self._cond.wait(_POLL_S)
                if not self._frames:
                    return
                frame = self._frames.popleft()
                self._cond.notify_all()
            try:
                self._inspect(frame)
            except Exception as exc:  # noqa: BLE001 - e.g. the store's disk full: log it, keep the camera alive
                log.error("camera %s: the result of %s was not recorded: %s", self.cfg.name, frame.ref, exc)

    def _inspect(self, frame: Frame) -> None:
        if frame.error is not None:
            self.station._record(self, frame, None, frame.error)
            return
        try:
            result = self.detector.predict(frame.image, bgr=frame.bgr)
        except Exception as exc:  # noqa: BLE001 - a bad frame or a failed model call: an ERROR result, not a crash
            self.station._record(self, frame, None, f"{type(exc).__name__}: {exc}")
            return
        self.station._record(self, frame, result, None)


class Station:
    """Cameras, detectors, store, archive and outputs of one StationConfig; see the module docstring.

    detectors: {camera name: Detector-like} to use instead of loading each camera's bundle (tests, or
    one Detector shared by several cameras).
    """

    def __init__(self, config: StationConfig, detectors: dict[str, Any] | None = None) -> None:
        self.config = config
        self._stopping = threading.Event()
        self._started = False
        # one frame at a time from store to outputs: ids, queue order and counters agree across threads
        self._record_lock = threading.Lock()
        self.store = ResultStore(config.store)
        self.archive = NgArchive(config.archive, self.store, config.archive_max_files, config.archive_max_bytes)
        self.outputs: dict[str, Output] = {}
        self._listeners: list[Callable[[Camera, Frame, Any, dict[str, Any]], None]] = []
        self._settings_lock = threading.Lock()
        detectors = dict(detectors or {})
        self._owned: list[Any] = []  # the detectors loaded here (closed by stop)
        try:
            for cam in config.cameras:
                if cam.name not in detectors:
                    detectors[cam.name] = load_detector(cam)
                    self._owned.append(detectors[cam.name])
            self.cameras = {cam.name: Camera(cam, detectors[cam.name],
                                             make_source(cam, self.store.refs(cam.name)), self)
                            for cam in config.cameras}
            self.outputs = self._make_outputs()
        except BaseException:
            self.archive.close()
            self.store.close()
            raise

    def _make_outputs(self) -> dict[str, Output]:
        cfg = self.config
        outputs: dict[str, Output] = {}
        if cfg.mqtt is not None:
            from aminet_edge.station.mqtt import MqttOutput

            outputs["mqtt"] = MqttOutput(cfg.mqtt, cfg.outbox, cfg.outbox_max)
        if cfg.webhook is not None:
            from aminet_edge.station.webhook import WebhookOutput

            outputs["webhook"] = WebhookOutput(cfg.webhook, cfg.outbox, cfg.outbox_max)
        if cfg.opcua is not None:
            from aminet_edge.station.opcua import OpcuaOutput

            outputs["opcua"] = OpcuaOutput(cfg.opcua, self._counts("opcua"), self.trigger)
        if cfg.modbus is not None:
            from aminet_edge.station.modbus import ModbusOutput

            outputs["modbus"] = ModbusOutput(cfg.modbus, self._counts("modbus"), self.trigger)
        return outputs

    def _counts(self, output: str) -> dict[str, dict[str, int]]:
        """The counters of the cameras that send to `output` (the protocol servers show only those)."""
        return {name: dict(cam.counts) for name, cam in self.cameras.items() if output in cam.cfg.outputs}

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "Station":
        """Start the outputs, then the cameras."""
        started = []
        try:
            for out in self.outputs.values():
                out.start()
                started.append(out)
        except BaseException:
            for out in started:
                out.stop()
            self.archive.close()
            self.store.close()
            raise
        for cam in self.cameras.values():
            cam.start()
        self._started = True
        log.info("station: %d camera(s), outputs: %s", len(self.cameras), ", ".join(self.outputs) or "none")
        return self

    def trigger(self, camera: str, part_id: str | None = None, origin: str = "api") -> None:
        """Software trigger of `camera`: one frame, recorded under `part_id` (default: the frame's own)."""
        if camera not in self.cameras:
            raise KeyError(f"no camera named {camera!r} (cameras: {', '.join(self.cameras)})")
        self.cameras[camera].trigger(part_id, origin)

    def camera(self, name: str) -> Camera:
        """The camera named `name`; KeyError naming the cameras there are."""
        if name not in self.cameras:
            raise KeyError(f"no camera named {name!r} (cameras: {', '.join(self.cameras)})")
        return self.cameras[name]

    def pause(self, camera: str) -> None:
        """Stop taking frames from `camera` (frames already taken are inspected); `resume` goes on."""
        self.camera(camera).paused = True

    def resume(self, camera: str) -> None:
        self.camera(camera).paused = False

    def set_sensitivity(self, camera: str, sensitivity: float, address: str = "api") -> tuple[float, float]:
        """Apply `sensitivity` (in [0, 1]) to `camera`'s detector for the frames that follow, keep it in its
        bundle's calibration (config.json, written atomically) and audit it in the store (table
        sensitivity_changes, with `address`: who asked). Returns (old, new). ValueError: out of range, or
        a camera whose model is served remotely (its bundle is not here to keep the value in)."""
        from aminet_edge.bundle import write_sensitivity
        from aminet_edge.runtime.detector import sensitivity_factor

        cam = self.camera(camera)
        sensitivity_factor(sensitivity)  # range check before anything changes
        if cam.cfg.bundle is None or not hasattr(cam.detector, "set_sensitivity"):
            raise ValueError(f"camera {camera!r} has no local bundle (url = {cam.cfg.url}): set its sensitivity "
                             "in the config")
        with self._settings_lock:
            old = float(cam.detector.sensitivity)
            write_sensitivity(cam.cfg.bundle, sensitivity)
            cam.detector.set_sensitivity(sensitivity)
            self.store.add_sensitivity_change(time.time(), camera, old, float(sensitivity), address)
        log.info("camera %s: sensitivity %g -> %g (from %s)", camera, old, sensitivity, address)
        return old, float(sensitivity)

    def add_listener(self, listener: Callable[[Camera, Frame, Any, dict[str, Any]], None]) -> None:
        """Call `listener(camera, frame, result or None, message)` for each frame once it is stored and sent,
        from the camera's thread with the station's record lock held: it must return at once."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Camera, Frame, Any, dict[str, Any]], None]) -> None:
        with self._record_lock:
            self._listeners.remove(listener)

    def wait(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Block until every camera finished (sources exhausted), `stop` is set, or `timeout` s passed;
        True when every camera finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not all(c.finished for c in self.cameras.values()):
            if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(_POLL_S)
        return True

    def stop(self, flush_timeout: float | None = None) -> dict[str, bool]:
        """Stop acquiring, inspect what was acquired, flush the outputs (`flush_timeout` s, default the
        config's) and close. Returns {output: its queue emptied}."""
        self._stopping.set()
        for cam in self.cameras.values():
            cam.join()
        timeout = self.config.flush_timeout if flush_timeout is None else flush_timeout
        deadline = time.monotonic() + timeout
        flushed = {name: out.flush(max(0.0, deadline - time.monotonic())) if self._started else True
                   for name, out in self.outputs.items()}
        for name, out in self.outputs.items():
            if not flushed[name]:
                log.warning("station: %s still holds %d message(s) on disk; they are sent at the next start",
                            name, out.state().get("queued", 0))
            out.stop()
        for detector in self._owned:
            close: Callable[[], None] | None = getattr(detector, "close", None)
            if close is not None:
                close()
        self.archive.close()
        self.store.close()
        return flushed

    def __enter__(self) -> "Station":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        """{"cameras": {name: camera state}, "outputs": {name: output state}, "archive": {...}} (JSON-ready)."""
        return {"cameras": {n: c.state() for n, c in self.cameras.items()},
                "outputs": {n: o.state() for n, o in self.outputs.items()},
                "archive": self.archive.usage()}

    # -- one frame's outcome --------------------------------------------------------------------
    def _record(self, cam: Camera, frame: Frame, result: Any, error: str | None) -> Record:
        """Store, archive and send one frame's outcome (from the camera's threads; serialised, so every
        output receives the results in store id order)."""
        decision = "ERROR" if result is None else ("NG" if result.is_anomaly else "OK")
        record = Record(time=frame.time, camera=cam.cfg.name, part_id=frame.part_id, ref=frame.ref,
                        origin=frame.origin, decision=decision, latency_ms=(time.time() - frame.time) * 1e3,
                        backend=str(getattr(cam.detector, "backend", "")), weights_sha256=cam.weights, error=error)
        if result is not None:
            record.score, record.normalized = float(result.score), float(result.normalized_score)
        with self._record_lock:
            self.store.add(record)
            if decision == "NG" and cam.cfg.archive_ng:
                path = self.archive.submit(record.id, cam.cfg.name, frame.part_id, frame.time, frame.image,
                                           frame.bgr, result)
                record.image_path = None if path is None else str(path)
            message = record.message()
            cam.counts[decision] += 1
            cam.last = message
            for name in cam.cfg.outputs:
                try:
                    self.outputs[name].publish(message)
                except Exception as exc:  # noqa: BLE001 - one output's failure must not affect the others
                    log.error("camera %s: output %s refused result %d: %s", cam.cfg.name, name, record.id, exc)
            for listener in self._listeners:
                try:
                    listener(cam, frame, result, message)
                except Exception as exc:  # noqa: BLE001 - a view's failure must not affect the inspection
                    log.error("camera %s: a listener failed on result %d: %s", cam.cfg.name, record.id, exc)
        return record
