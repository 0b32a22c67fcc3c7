"""`RemoteDetector`: `Detector`'s predict API against models served by Triton (torch-free).

    from aminet_edge.serving import RemoteDetector
    det = RemoteDetector(["http://10.0.0.5:8000", "http://10.0.0.6:8000"])   # round-robin, failover
    r = det.predict(frame_bgr, bgr=True)              # -> Result, as Detector.predict
    results = det.predict_batch(frames)               # -> list[Result]; a failed frame gets .error

Each image is one request (protocol.py); the server's dynamic batcher groups the requests of all
cameras. The decision (thresholds, sensitivity, normalised score, mask) is `decide`, the Detector's own
code, with the calibration the served model carries, so a frame gets the Result a Detector on the same
bundle and graph would give (tests/test_serving.py checks bit-identity).

Every frame ends in a Result or an error, never silence:
- InputError: the image is unusable (checked here where possible, else by the server) - not retried;
- ServerBusyError: every server's queue is full (back-pressure: Triton rejects at once; a frame
  refused by one server is offered to the next);
- RequestTimeoutError: no answer within `timeout` seconds of the frame's start: a deadline for the whole
  request (connect, send, queue, inference, receive, failover to the next URL), not a limit per network
  step, so a server that answers slowly byte by byte still ends in this error on time (a request still
  queued at the deadline is dropped by the server: the remaining time travels with it);
- ServerUnavailableError: no URL answered (refused, reset, restarting), after trying each once;
- RemoteError: the server failed for another reason (its message included).
Connection failures and an unhealthy model instance move the frame to the next URL; a URL that failed is
tried last for `down_for` seconds. Timed-out frames are not retried (the server may still be working on
them; resending adds load where there is too much already); the caller decides.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aminet_edge.bundle import BundleConfig
from aminet_edge.runtime.detector import ThresholdSpec, decide, override_thresholds, resolve_thresholds
from aminet_edge.runtime.inputs import InputError, Limits, batch_items, describe, split_batch
from aminet_edge.runtime.result import Result, Thresholds
from aminet_edge.tiling import grid
from aminet_edge.serving.protocol import BUNDLE_PARAMETER, INPUT_ERROR, MODEL_NAME, OUTPUTS, encode_image


class ServerBusyError(RuntimeError):
    """The server's request queue is full; send less or add servers (back-pressure)."""


class RequestTimeoutError(TimeoutError):
    """No answer within the client's timeout."""


class ServerUnavailableError(ConnectionError):
    """No server URL answered; the message lists each URL's reason."""


class RemoteError(RuntimeError):
    """The server answered with an error that is not about the image."""


# Triton's messages (2.51), the only signal of what went wrong
_BUSY = ("exceeds maximum queue size",)
_TIMEOUT = ("request timeout expired",)
_UNAVAILABLE = ("is not healthy", "is not ready", "unknown model", "server is not ready", "unavailable")


def _tritonclient() -> Any:
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise ImportError("RemoteDetector needs tritonclient (pip install 'aminet-edge[serving]')") from exc
    return httpclient


def _deadline_timer(seconds: float) -> Any:
    """A started gevent.Timeout: tritonclient's HTTP client does its socket I/O on gevent, so the timer
    interrupts the request at whatever step it is in when `seconds` have passed."""
    import gevent  # type: ignore[import-untyped]  # a dependency of tritonclient[http] (geventhttpclient)

    timer = gevent.Timeout(seconds)
    timer.start()
    return timer


def _address(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/") if "://" in url else url.rstrip("/")


class RemoteDetector:
    """Predict with a model served by Triton (`aminet-edge serve` / `triton-repo`); see the module docstring.

    urls: one URL ("http://host:8000" or "host:8000", Triton's HTTP port) or several (round-robin).
    model: the served model's name. threshold / sensitivity / pixel_threshold: as `Detector.load`.
    timeout: seconds from a frame's start to its answer (a deadline for the whole request; then
    RequestTimeoutError). concurrency: requests in flight from one
    `predict_batch` / `predict(list)` call. map_max_side: None = anomaly maps at the input's resolution
    (the server sends the S x S map, resized here as Detector does); k = the server sends the map already
    resized to longest side k (less bandwidth), and Results carry that smaller map and mask.
    Result.timing here: preprocess_ms = encoding the frame, backend_ms = the request's round trip
    (server queue, decode, model, transfer), batch_size 1 (the server's batch is not reported back).
    """

    def __init__(self, urls: str | Sequence[str], model: str = MODEL_NAME, *, threshold: ThresholdSpec = "normal",
                 sensitivity: float = 0.5, pixel_threshold: float | None = None, timeout: float = 30.0,
                 concurrency: int = 8, map_max_side: int | None = None, down_for: float = 2.0,
                 limits: Limits | None = None) -> None:
        self._http = _tritonclient()
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one server URL")
        if concurrency < 1 or timeout <= 0 or (map_max_side is not None and map_max_side < 1):
            raise ValueError("concurrency >= 1, timeout > 0 and map_max_side None or >= 1 are required")
        self.model = model
        self.timeout = float(timeout)
        self.concurrency = int(concurrency)
        self.map_max_side = map_max_side
        self.down_for = float(down_for)
        self.limits = limits or Limits()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._down: dict[str, float] = {}  # url -> monotonic time it failed
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="aminet-remote")
        self.config = self._bundle_config()
        self.image_size = self.config.model.image_size
        self._threshold, self._sensitivity, self._pixel_threshold = threshold, sensitivity, pixel_threshold
        self.thresholds = resolve_thresholds(self.config.calibration, threshold, pixel_threshold, sensitivity)
        self.backend = f"triton:{model}"

    # -- set-up -----------------------------------------------------------------------------------
    def _client(self, url: str) -> Any:
        clients = self._local.__dict__.setdefault("clients", {})
        if url not in clients:  # tritonclient's HTTP client is not thread-safe: one per thread and URL
            clients[url] = self._http.InferenceServerClient(_address(url), connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
        return clients[url]

    def _bundle_config(self) -> BundleConfig:
        reasons = {}
        for url in self.urls:
            try:
                cfg = self._client(url).get_model_config(self.model)
            except Exception as exc:  # noqa: BLE001 - try the next URL, report all
                reasons[url] = f"{type(exc).__name__}: {exc}"
                continue
            value = cfg.get("parameters", {}).get(BUNDLE_PARAMETER, {}).get("string_value")
            if not value:
                raise RemoteError(f"{url}: model {self.model!r} carries no {BUNDLE_PARAMETER!r} parameter; serve a "
                                  f"repository written by `aminet-edge triton-repo`")
            return BundleConfig.from_json(json.loads(value), f"{url} model {self.model}")
        raise ServerUnavailableError(f"no server answered for model {self.model!r}: " +
                                     "; ".join(f"{u}: {r}" for u, r in reasons.items()))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "RemoteDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteDetector({self.urls!r}, model={self.model!r}, image_threshold={self.thresholds.image:.6g})"

    # -- prediction (Detector's signatures) ------------------------------------------------------
    def predict(self, x: Any, *, bgr: bool = False, threshold: ThresholdSpec | None = None,
                sensitivity: float | None = None, pixel_threshold: float | None = None) -> Result | list[Result]:
        """As `Detector.predict`: one image -> Result (errors raised), a batch -> list (errors in .error)."""
        items, is_batch = split_batch(x)
        thresholds = self.thresholds_for(threshold, sensitivity, pixel_threshold)
        if not is_batch:
            return self._one(items[0], 0, None, bgr, thresholds).raise_for_error()
        return self._many(items, bgr, thresholds)

    def predict_batch(self, images: Iterable[Any] | np.ndarray, *, batch_size: int | None = None,
                      bgr: bool = False, threshold: ThresholdSpec | None = None, sensitivity: float | None = None,
                      pixel_threshold: float | None = None, prefetch: bool = True) -> list[Result]:
        """As `Detector.predict_batch`: always a list of Results in order. batch_size and prefetch are
        accepted for compatibility; batching happens on the server (`concurrency` requests in flight)."""
        items = batch_items(images)
        return self._many(items, bgr, self.thresholds_for(threshold, sensitivity, pixel_threshold))

    def thresholds_for(self, threshold: ThresholdSpec | None = None, sensitivity: float | None = None,
                       pixel_threshold: float | None = None) -> Thresholds:
        """The thresholds a predict call with these overrides would use (as `Detector.thresholds_for`)."""
        return override_thresholds(self.thresholds, self.config.calibration,
                                   (self._threshold, self._pixel_threshold, self._sensitivity),
                                   threshold, sensitivity, pixel_threshold)

    # -- internals --------------------------------------------------------------------------------
    def _many(self, items: list[Any], bgr: bool, thresholds: Thresholds) -> list[Result]:
        futures = [self._pool.submit(self._one, x, i, i, bgr, thresholds) for i, x in enumerate(items)]
        return [f.result() for f in futures]

    def _one(self, x: Any, position: int, index: int | None, bgr: bool, thresholds: Thresholds) -> Result:
        """One image end to end; never raises for the image's own or the server's failure."""
        source = describe(x, index)
        deadline = time.monotonic() + self.timeout
        t0 = time.perf_counter()
        try:
            data = encode_image(x, index, bgr, self.limits)
            encode_ms = (time.perf_counter() - t0) * 1e3
            t1 = time.perf_counter()
            url, outputs = self._send(data, source, index, deadline)
            ms = (time.perf_counter() - t1) * 1e3
        except (InputError, ServerBusyError, RequestTimeoutError, ServerUnavailableError, RemoteError) as exc:
            return Result(source=source, index=position, error=exc, backend=self.backend)
        score, amap, token_mask, size = outputs
        height, width = (int(v) for v in size)
        map_hw = (height, width) if self.map_max_side is None else amap.shape
        tiles = None
        if self.config.tile is not None:  # T tiles' token grids, flattened on the wire
            g = self.config.model.grid_size
            token_mask = np.asarray(token_mask).reshape(-1, g, g)
            tiles = tuple(grid(height, width, self.config.tile))
        result = decide(source, position, amap, score, token_mask, map_hw, thresholds, f"triton:{url}",
                        encode_ms, ms, 1, tiles)
        return result

    def _order(self) -> list[str]:
        """URLs from the next in turn; those that failed within down_for seconds last."""
        start = next(self._turn) % len(self.urls)
        order = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        with self._lock:
            down = {u for u, t in self._down.items() if now - t < self.down_for}
        return [u for u in order if u not in down] + [u for u in order if u in down]

    def _send(self, data: bytes, source: str, index: int | None, deadline: float) -> tuple[str, tuple[Any, ...]]:
        """Send to each URL in turn until one answers; RequestTimeoutError once `deadline` (monotonic) passes."""
        http = self._http
        image = np.frombuffer(data, np.uint8)[None]
        side = np.array([[self.map_max_side or 0]], np.int32)
        reasons: dict[str, str] = {}
        busy: dict[str, str] = {}
        for url in self._order():
            inputs = [http.InferInput("IMAGE", list(image.shape), "UINT8"),
                      http.InferInput("MAP_MAX_SIDE", [1, 1], "INT32")]
            inputs[0].set_data_from_numpy(image, binary_data=True)
            inputs[1].set_data_from_numpy(side, binary_data=True)
            outputs = [http.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(f"{source}: no answer within {self.timeout:g} s (tried "
                                          f"{', '.join(reasons) or 'no URL'})")
            timer = _deadline_timer(remaining)
            try:
                reply = self._client(url).infer(self.model, inputs, outputs=outputs,
                                                timeout=max(1, int(remaining * 1e6)))  # queue limit, us
            except (TimeoutError, type(timer)) as exc:  # the deadline, or a socket step's timeout
                if isinstance(exc, type(timer)) and exc is not timer:
                    raise
                self._drop(url)
                raise RequestTimeoutError(f"{source}: no answer from {url} within {self.timeout:g} s") from exc
            except OSError as exc:  # refused, reset, broken pipe: the server is down or restarting
                self._mark_down(url)
                reasons[url] = f"{type(exc).__name__}: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - InferenceServerException and protocol errors
                message = str(exc)
                low = message.lower()
                if INPUT_ERROR.lower() in low:
                    problem = message[low.index(INPUT_ERROR.lower()) + len(INPUT_ERROR):]
                    raise InputError(source, problem, index) from exc
                if any(s in low for s in _BUSY):  # full queue: another server may have room
                    busy[url] = message
                    continue
                if any(s in low for s in _TIMEOUT):
                    raise RequestTimeoutError(f"{source}: {url}: {message}") from exc
                if any(s in low for s in _UNAVAILABLE) or not hasattr(exc, "status"):
                    self._mark_down(url)
                    self._drop(url)
                    reasons[url] = f"{type(exc).__name__}: {message}"
                    continue
                raise RemoteError(f"{source}: {url}: {message}") from exc
            finally:
                timer.close()
            try:
                return url, (float(reply.as_numpy("SCORE").reshape(-1)[0]), reply.as_numpy("AMAP")[0],
                             reply.as_numpy("TOKEN_MASK")[0], reply.as_numpy("IMAGE_SIZE").reshape(-1))
            except (TypeError, IndexError, ValueError) as exc:  # an output missing or malformed
                raise RemoteError(f"{source}: {url} answered without the outputs {', '.join(OUTPUTS)} of an "
                                  f"aminet-edge model ({type(exc).__name__}: {exc})") from exc
        if busy:
            raise ServerBusyError(f"{source}: request queue full on {', '.join(busy)} (back-pressure: send fewer "
                                  f"frames or add servers)" + "".join(f"; {u}: {r}" for u, r in reasons.items()))
        raise ServerUnavailableError(f"{source}: no server answered: " +
                                     "; ".join(f"{u}: {r}" for u, r in reasons.items()))

    def _mark_down(self, url: str) -> None:
        with self._lock:
            self._down[url] = time.monotonic()
        self._drop(url)

    def _drop(self, url: str) -> None:
        """Forget this thread's client of `url`: its connection may be broken."""
        clients = self._local.__dict__.get("clients", {})
        client = clients.pop(url, None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
