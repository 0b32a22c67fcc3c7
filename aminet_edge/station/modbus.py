"""Modbus/TCP output (pymodbus server) for PLCs without OPC UA: the last result, counters and the PLC
handshake of each camera in holding registers (device id 1, function codes 3 / 6 / 16).

Camera k (0-based, in the config's order among the cameras that send to Modbus) owns registers
32*k ... 32*k + 31 (0-based addresses):
    +0   control, PLC writes:   bit 0 Trigger, bit 1 Acknowledge
    +1   status, station writes: bit 0 Busy, bit 1 ResultReady, bit 2 OK, bit 3 NG, bit 4 Error
    +2   trigger part id, PLC writes: uint32, high word first (0 = none: the frame's own id is used)
    +4   result id             uint32, high word first
    +6   result part id        uint32, high word first (0 if the part id is not a number)
    +8   normalized score      float32 IEEE 754, high word first (score / threshold; > 1 = NG; NaN on error)
    +10  raw score             float32, high word first
    +12  count OK, +14 count NG, +16 count Error: uint32, high word first
    +18  decision              0 none yet, 1 OK, 2 NG, 3 Error
The handshake is aminet_edge.station.handshake's (docs/station.md): Trigger and Acknowledge share one
register, so the PLC writes both in one go; the status word is one register, written after the result
registers. Polled every 5 ms; nothing is queued (handshake.HandshakeServer).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable
from typing import Any

from aminet_edge.station.config import ModbusConfig
from aminet_edge.station.handshake import HandshakeServer

log = logging.getLogger("aminet_edge.station")

BLOCK = 32
DEVICE_ID = 1
CONTROL, STATUS, RESULT_ID, COUNTS = 0, 1, 4, 12  # offsets in a camera's block (the map above)
STATUS_BITS = {"busy": 0, "ready": 1, "ok": 2, "ng": 3, "error": 4}
DECISION_CODES = {"OK": 1, "NG": 2, "ERROR": 3}
_READ, _WRITE = 3, 16  # function codes: read / write holding registers


def u32(value: int) -> list[int]:
    """uint32 as two registers, high word first."""
    return [(value >> 16) & 0xFFFF, value & 0xFFFF]


def f32(value: float) -> list[int]:
    """float32 as two registers, high word first."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def _pymodbus() -> Any:
    try:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice
    except ImportError as exc:
        raise ImportError("the Modbus output needs pymodbus >= 3.16 (pip install 'aminet-edge[station]')") from exc
    return ModbusTcpServer, DataType, SimData, SimDevice


class ModbusOutput(HandshakeServer):
    name = "modbus"
    origin = "modbus"

    def __init__(self, cfg: ModbusConfig, counts: dict[str, dict[str, int]],
                 trigger: Callable[[str, str | None, str], None]) -> None:
        self.pymodbus = _pymodbus()
        super().__init__(counts, trigger)
        self.cfg = cfg
        self.base = {cam: BLOCK * k for k, cam in enumerate(counts)}
        self._status = dict.fromkeys(counts, 0)
        self._server: Any = None
        self._task: Any = None

    def state(self) -> dict[str, Any]:
        return {"address": f"{self.cfg.host}:{self.cfg.port}", "registers": self.base, **super().state()}

    async def _serve(self) -> None:
        import asyncio

        server_cls, data_type, sim_data, sim_device = self.pymodbus
        device = sim_device(DEVICE_ID, simdata=sim_data(0, count=BLOCK * len(self.base), values=0,
                                                         datatype=data_type.REGISTERS))
        self._server = server_cls(device, address=(self.cfg.host, self.cfg.port))
        self._task = asyncio.create_task(self._server.serve_forever())
        for cam, counts in self.counts.items():
            await self._set(cam, COUNTS, [*u32(counts["OK"]), *u32(counts["NG"]), *u32(counts["ERROR"])])
        for _ in range(1000):  # listening, or failed (e.g. the port in use)
            if self._task.done():
                raise OSError(f"Modbus/TCP server on {self.cfg.host}:{self.cfg.port} did not start: "
                              f"{self._task.exception()}")
            if self._server.is_active():
                break
            await asyncio.sleep(0.01)
        log.info("Modbus/TCP server on %s:%d (device id %d)", self.cfg.host, self.cfg.port, DEVICE_ID)

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.shutdown()

    async def _set(self, cam: str, offset: int, values: list[int]) -> None:
        await self._server.async_setValues(DEVICE_ID, _WRITE, self.base[cam] + offset, values)

    async def _write_bit(self, cam: str, name: str, value: bool) -> None:
        mask = 1 << STATUS_BITS[name]
        self._status[cam] = (self._status[cam] | mask) if value else (self._status[cam] & ~mask)
        await self._set(cam, STATUS, [self._status[cam]])

    async def _write_result(self, cam: str, m: dict[str, Any], counts: dict[str, int]) -> None:
        part = m["part_id"]
        part_no = int(part) if part.isdigit() and int(part) < 2**32 else 0
        nan = math.nan
        await self._set(cam, RESULT_ID, [*u32(m["id"] % 2**32), *u32(part_no),
                                         *f32(nan if m["normalized"] is None else m["normalized"]),
                                         *f32(nan if m["score"] is None else m["score"]),
                                         *u32(counts["OK"]), *u32(counts["NG"]), *u32(counts["ERROR"]),
                                         DECISION_CODES[m["decision"]]])

    async def _inputs(self, cam: str) -> tuple[bool, bool, str]:
        control, _, hi, lo = await self._server.async_getValues(DEVICE_ID, _READ, self.base[cam] + CONTROL, 4)
        part = (hi << 16) | lo
        return bool(control & 1), bool(control & 2), str(part) if part else ""
