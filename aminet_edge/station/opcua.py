"""OPC UA output (asyncua server): per camera the last result, counters and the PLC handshake.

Address space (namespace `OpcuaConfig.namespace`, string node ids "<camera>.<name>", under
Objects/AminetStation/<camera>):
    last result (read):  ResultId Int64, PartId String, Score Double (raw), NormalizedScore Double
                         (score / threshold, > 1 = NG), Decision String (OK / NG / ERROR),
                         Timestamp DateTime (UTC, of the trigger), ErrorText String (why no verdict)
    counters (read):     CountOK, CountNG, CountError UInt64 (since the store was created)
    handshake:           Trigger Boolean (PLC writes), TriggerPartId String (PLC writes), Acknowledge
                         Boolean (PLC writes); Busy, ResultReady, OK, NG, Error Boolean (read)
The handshake is aminet_edge.station.handshake's (docs/station.md has the timing diagram), polled every
5 ms; nothing is queued (handshake.HandshakeServer). Endpoint security: none (anonymous, unencrypted), as
most line networks run it; keep the port on the machine network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from aminet_edge.station.config import OpcuaConfig
from aminet_edge.station.handshake import HandshakeServer

log = logging.getLogger("aminet_edge.station")

_RESULT = (("ResultId", "id", 0, "Int64"), ("PartId", "part_id", "", "String"), ("Score", "score", 0.0, "Double"),
           ("NormalizedScore", "normalized", 0.0, "Double"), ("Decision", "decision", "", "String"),
           ("ErrorText", "error", "", "String"))
_COUNTS = (("CountOK", "OK"), ("CountNG", "NG"), ("CountError", "ERROR"))
_BITS = {"busy": "Busy", "ready": "ResultReady", "ok": "OK", "ng": "NG", "error": "Error"}
_PLC = (("Trigger", False, "Boolean"), ("TriggerPartId", "", "String"), ("Acknowledge", False, "Boolean"))


def _asyncua() -> Any:
    try:
        import asyncua
    except ImportError as exc:
        raise ImportError("the OPC UA output needs asyncua (pip install 'aminet-edge[station]')") from exc
    return asyncua


class OpcuaOutput(HandshakeServer):
    name = "opcua"
    origin = "opcua"

    def __init__(self, cfg: OpcuaConfig, counts: dict[str, dict[str, int]],
                 trigger: Callable[[str, str | None, str], None]) -> None:
        self.asyncua = _asyncua()
        super().__init__(counts, trigger)
        self.cfg = cfg
        self.namespace_index = 0
        self._nodes: dict[str, Any] = {}
        self._server: Any = None

    def state(self) -> dict[str, Any]:
        return {"endpoint": self.cfg.endpoint, "namespace_index": self.namespace_index, **super().state()}

    async def _serve(self) -> None:
        ua = self.asyncua.ua
        server = self.asyncua.Server()
        await server.init()
        server.set_endpoint(self.cfg.endpoint)
        server.set_server_name("aminet-edge station")
        idx = self.namespace_index = await server.register_namespace(self.cfg.namespace)
        root = await server.nodes.objects.add_object(ua.NodeId("AminetStation", idx), f"{idx}:AminetStation")

        async def variable(parent: Any, cam: str, name: str, value: Any, kind: str, writable: bool = False) -> None:
            node = await parent.add_variable(ua.NodeId(f"{cam}.{name}", idx), f"{idx}:{name}",
                                             ua.Variant(value, getattr(ua.VariantType, kind)))
            if writable:
                await node.set_writable()
            self._nodes[f"{cam}.{name}"] = node

        for cam in self.handshakes:
            obj = await root.add_object(ua.NodeId(cam, idx), f"{idx}:{cam}")
            for name, _, value, kind in _RESULT:
                await variable(obj, cam, name, value, kind)
            await variable(obj, cam, "Timestamp", datetime.fromtimestamp(0, timezone.utc), "DateTime")
            for name, key in _COUNTS:
                await variable(obj, cam, name, self.counts[cam][key], "UInt64")
            for name in _BITS.values():
                await variable(obj, cam, name, False, "Boolean")
            for name, value, kind in _PLC:
                await variable(obj, cam, name, value, kind, writable=True)
        self._server = server
        await server.start()
        log.info("OPC UA server on %s (namespace %d: %s)", self.cfg.endpoint, idx, self.cfg.namespace)

    async def _shutdown(self) -> None:
        if self._server is not None:
            await self._server.stop()

    async def _write(self, cam: str, name: str, value: Any, kind: str) -> None:
        # the server's own address space directly (no session round trip): subscribed clients are notified
        ua = self.asyncua.ua
        await self._server.write_attribute_value(self._nodes[f"{cam}.{name}"].nodeid,
                                                 ua.DataValue(ua.Variant(value, getattr(ua.VariantType, kind))))

    async def _write_bit(self, cam: str, name: str, value: bool) -> None:
        await self._write(cam, _BITS[name], value, "Boolean")

    async def _write_result(self, cam: str, m: dict[str, Any], counts: dict[str, int]) -> None:
        for name, key, _, kind in _RESULT:
            value = m[key]
            await self._write(cam, name, (float("nan") if kind == "Double" else "") if value is None else value, kind)
        await self._write(cam, "Timestamp", datetime.fromtimestamp(m["time"], timezone.utc), "DateTime")
        for name, key in _COUNTS:
            await self._write(cam, name, counts[key], "UInt64")

    def _read(self, cam: str, name: str) -> Any:
        return self._server.read_attribute_value(self._nodes[f"{cam}.{name}"].nodeid).Value.Value

    async def _inputs(self, cam: str) -> tuple[bool, bool, str]:
        # Trigger before Acknowledge: a PLC writes Acknowledge = 0 before Trigger = 1 (handshake.py)
        trigger = bool(self._read(cam, "Trigger"))
        ack = bool(self._read(cam, "Acknowledge"))
        return trigger, ack, str(self._read(cam, "TriggerPartId") or "")
