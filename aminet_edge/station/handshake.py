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

import threading
from collections.abc import Callable
from dataclasses import dataclass


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
