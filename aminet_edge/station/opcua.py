"""OPC UA output (asyncua server): per camera the last result, counters and the PLC handshake.

Address space (namespace `OpcuaConfig.namespace`, string node ids "<camera>.<name>", under
Objects/AminetStation/<camera>):
    last result (read):  ResultId Int64, PartId String, Score Double (raw), NormalizedScore Double
                         (score / threshold, > 1 = NG), Decision String (OK / NG / ERROR),
                         Timestamp DateTime (UTC, of the trigger), ErrorText String (why no verdict)
    counters (read):     CountOK, CountNG, CountError UInt64 (since the store was created)
    handshake:           Trigger Boolean (PLC writes), TriggerPartId String (PLC writes), Acknowledge
                         Boolean (PLC writes); Busy, ResultReady, OK, NG, Error Boolean (read)
The handshake is aminet_edge.station.handshake's (docs/station.md has the timing diagram). The server's
loop polls the PLC's inputs every POLL_S seconds. Endpoint security: none (anonymous, unencrypted), as
most line networks run it; keep the port on the machine network.

Nothing is queued here: the nodes hold the latest values, so a client that is gone misses nothing it
could read later, and a result is never held back by a client. Result updates are handed to the server's
event loop and return at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from aminet_edge.station.config import OpcuaConfig
from aminet_edge.station.handshake import Bits, Handshake

log = logging.getLogger("aminet_edge.station")

POLL_S = 0.005
ORIGIN = "opcua"
_RESULT = (("ResultId", 0, "Int64"), ("PartId", "", "String"), ("Score", 0.0, "Double"),
           ("NormalizedScore", 0.0, "Double"), ("Decision", "", "String"), ("ErrorText", "", "String"))
_COUNTS = ("CountOK", "CountNG", "CountError")
_BITS = (("Busy", "busy"), ("ResultReady", "ready"), ("OK", "ok"), ("NG", "ng"), ("Error", "error"))
_PLC = (("Trigger", False, "Boolean"), ("TriggerPartId", "", "String"), ("Acknowledge", False, "Boolean"))


def _asyncua() -> Any:
    try:
        import asyncua
    except ImportError as exc:
        raise ImportError("the OPC UA output needs asyncua (pip install 'aminet-edge[station]')") from exc
    return asyncua


class OpcuaOutput:
    name = "opcua"

    def __init__(self, cfg: OpcuaConfig, counts: dict[str, dict[str, int]],
                 trigger: Callable[[str, str | None, str], None]) -> None:
        self.ua = _asyncua()
        self.cfg = cfg
        self.counts = {cam: dict(c) for cam, c in counts.items()}
        self.handshakes = {cam: Handshake(cam, ORIGIN, trigger) for cam in counts}
        self.namespace_index = 0
        self._nodes: dict[str, Any] = {}
        self._server: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aminet-opcua", daemon=True)
        self._poller: Any = None

    # -- life cycle (called from the station's thread) -------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=60)
        self._poller = asyncio.run_coroutine_threadsafe(self._poll(), self._loop)
        log.info("OPC UA server on %s (namespace %d: %s)", self.cfg.endpoint, self.namespace_index,
                 self.cfg.namespace)

    def publish(self, message: dict[str, Any]) -> None:
        """Show a result (returns at once; the server's loop writes the nodes)."""
        asyncio.run_coroutine_threadsafe(self._show(message), self._loop)

    def flush(self, timeout: float) -> bool:
        """Let the writes already handed over finish (nothing is queued beyond them)."""
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(timeout=max(timeout, 0.1))
            return True
        except Exception:  # noqa: BLE001 - a stuck loop: report not flushed
            return False

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(timeout=10)
            except Exception as exc:  # noqa: BLE001 - stopping anyway
                log.warning("OPC UA server did not stop cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def state(self) -> dict[str, Any]:
        return {"endpoint": self.cfg.endpoint, "namespace_index": self.namespace_index,
                "handshake": {cam: hs.state() for cam, hs in self.handshakes.items()}}

    # -- in the server's loop ------------------------------------------------------------------------
    async def _serve(self) -> None:
        ua = self.ua.ua
        server = self.ua.Server()
        await server.init()
        server.set_endpoint(self.cfg.endpoint)
        server.set_server_name("aminet-edge station")
        idx = self.namespace_index = await server.register_namespace(self.cfg.namespace)
        self._bit_locks = {cam: asyncio.Lock() for cam in self.handshakes}
        self._shown = {cam: Bits() for cam in self.handshakes}
        root = await server.nodes.objects.add_object(ua.NodeId("AminetStation", idx), f"{idx}:AminetStation")

        async def variable(parent: Any, cam: str, name: str, value: Any, kind: str, writable: bool = False) -> None:
            node = await parent.add_variable(ua.NodeId(f"{cam}.{name}", idx), f"{idx}:{name}",
                                             ua.Variant(value, getattr(ua.VariantType, kind)))
            if writable:
                await node.set_writable()
            self._nodes[f"{cam}.{name}"] = node

        for cam in self.handshakes:
            obj = await root.add_object(ua.NodeId(cam, idx), f"{idx}:{cam}")
            for name, value, kind in _RESULT:
                await variable(obj, cam, name, value, kind)
            await variable(obj, cam, "Timestamp", datetime.fromtimestamp(0, timezone.utc), "DateTime")
            for name, key in zip(_COUNTS, ("OK", "NG", "ERROR")):
                await variable(obj, cam, name, self.counts[cam][key], "UInt64")
            for name, _ in _BITS:
                await variable(obj, cam, name, False, "Boolean")
            for name, value, kind in _PLC:
                await variable(obj, cam, name, value, kind, writable=True)
        await server.start()
        self._server = server

    async def _write(self, cam: str, name: str, value: Any, kind: str) -> None:
        ua = self.ua.ua
        await self._nodes[f"{cam}.{name}"].write_value(ua.DataValue(ua.Variant(value, getattr(ua.VariantType, kind))))

    async def _sync_bits(self, cam: str) -> None:
        """Publish the handshake's current bits: a set ResultReady after the OK / NG / Error it announces,
        a cleared one before them. Serialised per camera, so the PLC never sees an older state again."""
        async with self._bit_locks[cam]:
            bits = self.handshakes[cam].bits
            if bits == self._shown[cam]:
                return
            order = _BITS[2:] + _BITS[:2] if bits.ready else _BITS[:2] + _BITS[2:]
            for name, key in order:
                await self._write(cam, name, getattr(bits, key), "Boolean")
            self._shown[cam] = bits

    async def _show(self, m: dict[str, Any]) -> None:
        cam = m["camera"]
        self.counts[cam][m["decision"]] += 1
        for name, key, kind in (("ResultId", "id", "Int64"), ("PartId", "part_id", "String"),
                                ("Score", "score", "Double"), ("NormalizedScore", "normalized", "Double"),
                                ("Decision", "decision", "String"), ("ErrorText", "error", "String")):
            value = m[key]
            await self._write(cam, name, (float("nan") if kind == "Double" else "") if value is None else value, kind)
        await self._write(cam, "Timestamp", datetime.fromtimestamp(m["time"], timezone.utc), "DateTime")
        for name, key in zip(_COUNTS, ("OK", "NG", "ERROR")):
            await self._write(cam, name, self.counts[cam][key], "UInt64")
        if self.handshakes[cam].result(m["decision"], m["origin"]) is not None:
            await self._sync_bits(cam)

    async def _poll(self) -> None:
        while True:
            for cam, hs in self.handshakes.items():
                try:
                    # Trigger before Acknowledge: a PLC writes Acknowledge = 0 before Trigger = 1 (handshake.py)
                    trigger = bool(await self._nodes[f"{cam}.Trigger"].read_value())
                    ack = bool(await self._nodes[f"{cam}.Acknowledge"].read_value())
                    part = str(await self._nodes[f"{cam}.TriggerPartId"].read_value() or "")
                    hs.poll(trigger, ack, part)
                    await self._sync_bits(cam)
                except Exception as exc:  # noqa: BLE001 - keep serving the other cameras
                    log.error("OPC UA handshake of %s: %s", cam, exc)
            await asyncio.sleep(POLL_S)
