"""The PLC handshake of one camera, the same over OPC UA and Modbus (docs/station.md has the timing diagram).

Signals. PLC -> station: Trigger (a rising edge starts an inspection), PartId (read at that edge),
Acknowledge (the PLC has taken the result). Station -> PLC: Busy, ResultReady, OK, NG, Error (exactly one
of OK / NG / Error is set while ResultReady is).

Sequence:
  1. PLC: when Busy = 0, ResultReady = 0 and its Acknowledge = 0, writes PartId, then sets Trigger.
  2. Station: Busy = 1, takes the frame (software trigger of the camera, carrying PartId and the time).
  3. Station: writes the result (PartId, Score, Decision, counters), then OK / NG / Error, then
     ResultReady = 1 and Busy = 0 (in that order, so a PLC that sees ResultReady sees the result).
  4. PLC: reads OK / NG / Error, resets Trigger, then sets Acknowledge.
  5. Station: when Acknowledge = 1 and Trigger = 0, clears ResultReady, then OK, NG, Error.
  6. PLC: sees ResultReady = 0, resets Acknowledge; the next part may be triggered.
Levels, not pulses: the station reads the PLC's inputs every few ms, so each level must be held until the
station's answer shows it was seen (Busy or ResultReady for Trigger, ResultReady = 0 for Acknowledge).
Step 5 waiting for Trigger = 0 guarantees the station saw Trigger low, so the next rising edge is never
missed. A rising Trigger while Busy, ResultReady or Acknowledge is set is ignored and counted
(`ignored_triggers`). The handshake only answers results of its own triggers; results of other triggers
and free-run frames update the last-result values and counters only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("aminet_edge.station")


@dataclass(frozen=True)
class Bits:
    """The station's handshake outputs."""

    busy: bool = False
    ready: bool = False
    ok: bool = False
    ng: bool = False
    error: bool = False


class Handshake:
    """One camera's handshake state machine; `fire(camera, part_id, origin)` is the software trigger.

    `poll` (from the protocol server's loop, with the PLC's inputs) and `result` (from the camera's thread)
    may run in different threads; both return the bits to publish.
    """

    def __init__(self, camera: str, origin: str, fire: Callable[[str, str | None, str], None]) -> None:
        self.camera, self.origin, self.fire = camera, origin, fire
        self.bits = Bits()
        self.ignored_triggers = 0
        self._trigger = self._ack = False
        self._lock = threading.Lock()

    @property
    def inputs(self) -> dict[str, bool]:
        """The PLC's inputs as last seen: {"trigger": ..., "acknowledge": ...} (for commissioning views)."""
        return {"trigger": self._trigger, "acknowledge": self._ack}

    def state(self) -> dict[str, object]:
        """Bits, PLC inputs as last seen and ignored triggers (JSON-ready)."""
        return {**self.bits.__dict__, **{f"plc_{k}": v for k, v in self.inputs.items()},
                "ignored_triggers": self.ignored_triggers}

    def poll(self, trigger: bool, acknowledge: bool, part_id: str) -> Bits:
        """Feed the PLC's current inputs (levels); a trigger acts on its rising edge."""
        fire = False
        with self._lock:
            if trigger and not self._trigger:
                if self.bits.busy or self.bits.ready or acknowledge:
                    self.ignored_triggers += 1
                else:
                    self.bits, fire = Bits(busy=True), True
            if acknowledge and not trigger and self.bits.ready:
                self.bits = Bits()
            self._trigger, self._ack = trigger, acknowledge
            bits = self.bits
        if fire:
            try:
                self.fire(self.camera, part_id or None, self.origin)
            except Exception:  # noqa: BLE001 - e.g. a free-run camera: answer with Error instead of hanging
                with self._lock:
                    self.bits = bits = Bits(ready=True, error=True)
        return bits

    def result(self, decision: str, origin: str) -> Bits | None:
        """A result of the camera: the new bits if it answers this handshake's trigger, else None."""
        with self._lock:
            if origin != self.origin or not self.bits.busy:
                return None
            self.bits = Bits(ready=True, ok=decision == "OK", ng=decision == "NG", error=decision == "ERROR")
            return self.bits


def bit_order(bits: Bits) -> tuple[str, ...]:
    """The order to publish `bits` in, which a PLC may rely on: a set ResultReady after the OK / NG / Error
    it announces, a cleared one before them."""
    return ("ok", "ng", "error", "busy", "ready") if bits.ready else ("ready", "busy", "ok", "ng", "error")


class HandshakeServer:
    """Base of the protocol servers (OPC UA, Modbus): an asyncio loop in its own thread, the cameras'
    handshakes polled every `poll_s`, results shown as they come. Subclasses implement `_serve` (start the
    server), `_shutdown`, `_inputs(camera) -> (trigger, acknowledge, part_id)`, `_write_bit(camera, name,
    value)` and `_write_result(camera, message, counts)`.

    Nothing is queued: the server holds the latest values, so a client that is gone misses nothing it could
    read later and never holds a result back. `publish` hands the result to the loop and returns at once.
    """

    name = "handshake"
    origin = "handshake"
    poll_s = 0.005

    def __init__(self, counts: dict[str, dict[str, int]], trigger: Callable[[str, str | None, str], None]) -> None:
        import asyncio

        self.counts = {cam: dict(c) for cam, c in counts.items()}
        self.handshakes = {cam: Handshake(cam, self.origin, trigger) for cam in counts}
        self._shown = {cam: Bits() for cam in counts}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"aminet-{self.name}", daemon=True)
        self._poller: Any = None
        self._bit_locks: dict[str, Any] = {}

    async def _serve(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _shutdown(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _inputs(self, camera: str) -> tuple[bool, bool, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _write_bit(self, camera: str, name: str, value: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _write_result(self, camera: str, message: dict[str, Any], counts: dict[str, int]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    # -- from the station's threads --------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def start(self) -> None:
        import asyncio

        self._thread.start()
        self._call(self._setup(), 60)
        self._poller = asyncio.run_coroutine_threadsafe(self._poll(), self._loop)

    async def _setup(self) -> None:
        import asyncio

        self._bit_locks = {cam: asyncio.Lock() for cam in self.handshakes}
        await self._serve()

    def publish(self, message: dict[str, Any]) -> None:
        """Show a result (returns at once; the server's loop writes it)."""
        import asyncio

        asyncio.run_coroutine_threadsafe(self._show(message), self._loop)

    def flush(self, timeout: float) -> bool:
        """Let the writes already handed over finish (nothing is queued beyond them)."""
        import asyncio

        try:
            self._call(asyncio.sleep(0), max(timeout, 0.1))
            return True
        except Exception:  # noqa: BLE001 - a stuck loop: report not flushed
            return False

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._poller is not None:
            self._poller.cancel()
        try:
            self._call(self._shutdown(), 10)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("%s server did not stop cleanly: %s", self.name, exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def state(self) -> dict[str, Any]:
        return {"handshake": {cam: hs.state() for cam, hs in self.handshakes.items()}}

    # -- in the server's loop ------------------------------------------------------------------------
    async def _show(self, m: dict[str, Any]) -> None:
        cam = m["camera"]
        self.counts[cam][m["decision"]] += 1
        await self._write_result(cam, m, self.counts[cam])
        if self.handshakes[cam].result(m["decision"], m["origin"]) is not None:
            await self._sync_bits(cam)

    async def _sync_bits(self, cam: str) -> None:
        """Publish the handshake's current bits in `bit_order`; serialised per camera, so the PLC never
        sees an older state again."""
        async with self._bit_locks[cam]:
            bits = self.handshakes[cam].bits
            if bits == self._shown[cam]:
                return
            for name in bit_order(bits):
                await self._write_bit(cam, name, getattr(bits, name))
            self._shown[cam] = bits

    async def _poll(self) -> None:
        import asyncio

        while True:
            for cam, hs in self.handshakes.items():
                try:
                    hs.poll(*await self._inputs(cam))
                    await self._sync_bits(cam)
                except Exception as exc:  # noqa: BLE001 - keep serving the other cameras
                    log.error("%s handshake of %s: %s", self.name, cam, exc)
            await asyncio.sleep(self.poll_s)
