"""Station outputs against real servers and clients started by the tests: a mosquitto broker (stopped and
started again mid-run), a local HTTP server failing on purpose, an asyncua client driving the PLC handshake,
a pymodbus client doing the same over Modbus/TCP. Plus the on-disk outbox's bound.

Every wait polls a condition with a deadline; faults are injected (broker stopped, HTTP 503), never timed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared bundle is built with torch

from test_station import (bundle, detector, folder_camera, images, stored, toml_config,  # noqa: E402,F401
                          wait_for, write_images)

from aminet_edge.runtime import Detector  # noqa: E402
from aminet_edge.station import Station, load_config  # noqa: E402
from aminet_edge.station.outbox import Outbox  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---- the outbox's bound ---------------------------------------------------------------------------
def test_outbox_drops_the_oldest_beyond_its_bound_and_persists(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.db", max_messages=3)
    for i in range(5):
        box.put({"id": i})
    assert (box.depth, box.dropped) == (3, 2)
    seq, message = box.peek()  # type: ignore[misc]
    assert message == {"id": 2}
    box.ack(seq)
    box.close()
    again = Outbox(tmp_path / "q.db", max_messages=3)  # a restart keeps the queue and the count
    assert (again.depth, again.dropped) == (2, 2) and again.peek()[1] == {"id": 3}  # type: ignore[index]
    again.close()


# ---- MQTT through a real broker --------------------------------------------------------------------
class Mosquitto:
    """A mosquitto broker on a free port with persistence in `folder` (so a persistent subscriber's
    session and queued messages survive a broker restart, as on a production broker)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/test.sh does)")
        self.binary, self.port = binary, free_port()
        self.conf = folder / "mosquitto.conf"
        # as root, mosquitto would switch to its own user, which cannot enter pytest's private temp folders
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n{user}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)])
        wait_for(lambda: accepts(self.port), f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber (what a line's consumer should be) collecting messages."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="line-consumer", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe("aminet/+/result", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_broker_stopped_mid_run_every_result_arrives_in_order(tmp_path: Path, bundle: Path,
                                                                   detector: Detector,
                                                                   images: list[np.ndarray]) -> None:
    """Two cameras publish; the broker stops after the first results: inspection goes on (all results
    stored, messages wait on disk), the broker starts again and every result arrives, in store id order
    across both cameras' topics; a duplicate is only ever the same message again (same id and part id):
    at-least-once."""
    pytest.importorskip("paho.mqtt.client")
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port)
    top, side = tmp_path / "top", tmp_path / "side"
    top.mkdir()
    side.mkdir()
    outputs = f"[outputs.mqtt]\nhost = \"127.0.0.1\"\nport = {broker.port}\ntopic = \"aminet/{{camera}}/result\"\n"
    cams = folder_camera("top", bundle, top) + folder_camera("side", bundle, side)
    cfg = load_config(toml_config(tmp_path, cams, outputs=outputs))

    def stored_count(station: Station) -> int:
        return sum(sum(c["counts"].values()) for c in station.state()["cameras"].values())

    try:
        wait_for(sub.subscribed.is_set, "the subscription")
        with Station(cfg, detectors={"top": detector, "side": detector}) as station:
            write_images(top, images[:3], [f"a{i}.png" for i in range(3)])
            wait_for(lambda: len({m["id"] for _, m in sub.messages}) == 3, "3 messages")
            broker.stop()
            write_images(top, images, [f"b{i}.png" for i in range(6)])
            write_images(side, images[:4], [f"s{i}.png" for i in range(4)])
            wait_for(lambda: stored_count(station) == 13, "13 stored results")
            state = station.state()["outputs"]["mqtt"]
            assert state["queued"] >= 9 and state["failures"] >= 1  # waiting on disk, inspection not stalled
            broker.start()
            wait_for(lambda: len({m["id"] for _, m in sub.messages}) == 13, "all 13 messages after the restart")
            assert station.state()["outputs"]["mqtt"]["dropped"] == 0
        rows = stored(cfg.store)
    finally:
        sub.close()
        broker.stop()
    first_seen: dict[int, dict[str, Any]] = {}
    for topic, message in sub.messages:
        assert topic == f"aminet/{message['camera']}/result"
        if message["id"] in first_seen:
            assert message == first_seen[message["id"]]  # a re-send is the same message
        first_seen.setdefault(message["id"], message)
    assert list(first_seen) == [r["id"] for r in rows]  # every result, in order
    assert {m["camera"] for m in first_seen.values()} == {"top", "side"}
    for row in rows:
        got = first_seen[row["id"]]
        assert (got["part_id"], got["score"], got["decision"]) == (row["part_id"], row["score"], row["decision"])


# ---- webhook ---------------------------------------------------------------------------------------
class Receiver(BaseHTTPRequestHandler):
    fail_first = 3
    calls: list[int] = []
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body["id"])
        if len(type(self).calls) <= type(self).fail_first:
            self.send_response(503)
        else:
            type(self).bodies.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_retries_in_order_after_failures(tmp_path: Path, bundle: Path, detector: Detector,
                                                 images: list[np.ndarray]) -> None:
    Receiver.calls, Receiver.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inbox = tmp_path / "inbox"
    write_images(inbox, images[:4])
    outputs = f"[outputs.webhook]\nurl = \"http://127.0.0.1:{server.server_port}/results\"\n"
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox), outputs=outputs))
    try:
        with Station(cfg, detectors={"top": detector}) as station:
            wait_for(lambda: len(Receiver.bodies) == 4, "4 delivered posts")
            state = station.state()["outputs"]["webhook"]
    finally:
        server.shutdown()
    rows = stored(cfg.store)
    assert [b["id"] for b in Receiver.bodies] == [r["id"] for r in rows]
    assert Receiver.calls[:3] == [rows[0]["id"]] * 3  # the failed message is retried before any later one
    assert state["failures"] == 3 and state["delivered"] == 4 and state["queued"] == 0


# ---- OPC UA: a real asyncua client as the PLC ------------------------------------------------------
async def _plc_over_opcua(url: str, namespace: str, camera: str, parts: list[str],
                          handshake: Any) -> dict[str, Any]:
    """Drive the handshake as a PLC would (docs/station.md): per part wait idle, write TriggerPartId, raise
    Trigger, wait ResultReady, read the verdict, acknowledge, wait ResultReady low, drop Acknowledge.
    After the first result, one extra Trigger edge before acknowledging must be ignored."""
    import asyncio

    from asyncua import Client, ua

    async with Client(url) as client:
        idx = await client.get_namespace_index(namespace)

        def node(name: str) -> Any:
            return client.get_node(ua.NodeId(f"{camera}.{name}", idx))

        async def until(name: str, value: bool) -> None:
            for _ in range(6000):  # up to 60 s
                if bool(await node(name).read_value()) == value:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{name} never became {value}")

        async def write(name: str, value: Any, kind: str) -> None:
            await node(name).write_value(ua.DataValue(ua.Variant(value, getattr(ua.VariantType, kind))))

        seen: list[dict[str, Any]] = []
        for k, part in enumerate(parts):
            await until("Busy", False)
            await until("ResultReady", False)
            await write("TriggerPartId", part, "String")
            await write("Trigger", True, "Boolean")
            await until("ResultReady", True)
            got = {name: await node(name).read_value() for name in
                   ("OK", "NG", "Error", "Busy", "PartId", "Score", "Decision", "ResultId", "CountOK", "CountNG",
                    "CountError")}
            seen.append(got)
            await write("Trigger", False, "Boolean")
            if k == 0:  # a new trigger before acknowledging is ignored (each level held until the station saw it)
                for level in (False, True, False):
                    await write("Trigger", level, "Boolean")
                    for _ in range(6000):
                        if handshake()["plc_trigger"] == level:
                            break
                        await asyncio.sleep(0.01)
            await write("Acknowledge", True, "Boolean")
            await until("ResultReady", False)
            cleared = [bool(await node(n).read_value()) for n in ("OK", "NG", "Error")]
            assert cleared == [False, False, False]
            await write("Acknowledge", False, "Boolean")
        return {"results": seen}


def test_opcua_plc_handshake_with_a_real_client(tmp_path: Path, bundle: Path, detector: Detector,
                                                images: list[np.ndarray]) -> None:
    """An asyncua client triggers 4 parts through the handshake: each verdict it reads (OK/NG bits,
    PartId, Score, counters) is the stored result and Detector.predict's on the frame the trigger took."""
    pytest.importorskip("asyncua")
    import asyncio

    inbox = tmp_path / "inbox"
    paths = write_images(inbox, images[:4])
    port = free_port()
    outputs = f"[outputs.opcua]\nendpoint = \"opc.tcp://127.0.0.1:{port}/aminet/\"\n"
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox, 'trigger = "software"'),
                                  outputs=outputs))
    parts = [f"P-{i:04d}" for i in range(4)]
    with Station(cfg, detectors={"top": detector}) as station:
        plc = asyncio.run(_plc_over_opcua(f"opc.tcp://127.0.0.1:{port}/aminet/", cfg.opcua.namespace, "top",
                                          parts, lambda: station.state()["outputs"]["opcua"]["handshake"]["top"]))
        ignored = station.state()["outputs"]["opcua"]["handshake"]["top"]["ignored_triggers"]
    rows = stored(cfg.store)
    want = detector.predict_batch([str(p) for p in paths])
    assert [r["part_id"] for r in rows] == parts and [r["origin"] for r in rows] == ["opcua"] * 4
    assert ignored == 1 and len(rows) == 4  # the extra trigger made no result
    ok = ng = 0
    for got, row, ref in zip(plc["results"], rows, want):
        ok, ng = ok + (not ref.is_anomaly), ng + ref.is_anomaly
        assert (got["OK"], got["NG"], got["Error"], got["Busy"]) == (not ref.is_anomaly, ref.is_anomaly, False, False)
        assert (got["PartId"], got["ResultId"], got["Decision"]) == (row["part_id"], row["id"], row["decision"])
        assert got["Score"] == ref.score == row["score"]
        assert (got["CountOK"], got["CountNG"], got["CountError"]) == (ok, ng, 0)


# ---- Modbus/TCP: a real pymodbus client as the PLC -------------------------------------------------
async def _plc_over_modbus(port: int, parts: list[int]) -> list[dict[str, Any]]:
    """The handshake over holding registers of camera 0 (aminet_edge.station.modbus' map)."""
    import asyncio
    import struct

    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    assert await client.connect()

    async def status() -> int:
        return (await client.read_holding_registers(1, count=1, device_id=1)).registers[0]

    async def until(mask: int, want: int) -> int:
        for _ in range(6000):
            if (value := await status()) & mask == want:
                return value
            await asyncio.sleep(0.01)
        raise AssertionError(f"status & {mask:#x} never became {want:#x}")

    def u32(regs: list[int]) -> int:
        return regs[0] << 16 | regs[1]

    def f32(regs: list[int]) -> float:
        return float(struct.unpack(">f", struct.pack(">HH", *regs))[0])

    seen = []
    try:
        for part in parts:
            await until(0b11, 0)  # not busy, no result waiting
            await client.write_registers(2, [part >> 16, part & 0xFFFF], device_id=1)
            await client.write_register(0, 1, device_id=1)  # Trigger
            st = await until(0b10, 0b10)  # ResultReady
            regs = (await client.read_holding_registers(4, count=15, device_id=1)).registers
            seen.append({"status": st, "id": u32(regs[0:2]), "part": u32(regs[2:4]), "normalized": f32(regs[4:6]),
                         "score": f32(regs[6:8]), "counts": (u32(regs[8:10]), u32(regs[10:12]), u32(regs[12:14])),
                         "decision": regs[14]})
            await client.write_register(0, 2, device_id=1)  # Trigger low, Acknowledge high (one register)
            assert await until(0b11111, 0) == 0  # ResultReady, OK, NG, Error cleared
            await client.write_register(0, 0, device_id=1)
    finally:
        client.close()
    return seen


def test_modbus_plc_handshake_with_a_real_client(tmp_path: Path, bundle: Path, detector: Detector,
                                                 images: list[np.ndarray]) -> None:
    """A pymodbus client triggers 4 numbered parts: the registers it reads hold the stored result and
    Detector.predict's score (as float32) and decision for the frame each trigger took."""
    pytest.importorskip("pymodbus")
    import asyncio

    inbox = tmp_path / "inbox"
    paths = write_images(inbox, images[:4])
    port = free_port()
    outputs = f"[outputs.modbus]\nhost = \"127.0.0.1\"\nport = {port}\n"
    cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox, 'trigger = "software"'),
                                  outputs=outputs))
    parts = [1000 + i for i in range(3)] + [70000]  # the last one needs both words
    with Station(cfg, detectors={"top": detector}):
        plc = asyncio.run(_plc_over_modbus(port, parts))
    rows = stored(cfg.store)
    want = detector.predict_batch([str(p) for p in paths])
    assert [r["part_id"] for r in rows] == [str(p) for p in parts] and {r["origin"] for r in rows} == {"modbus"}
    ok = ng = 0
    for got, row, ref, part in zip(plc, rows, want, parts):
        ok, ng = ok + (not ref.is_anomaly), ng + ref.is_anomaly
        assert got["status"] == 0b10 | (0b1000 if ref.is_anomaly else 0b100)  # ResultReady + NG or OK, not busy
        assert (got["id"], got["part"], got["decision"]) == (row["id"], part, 2 if ref.is_anomaly else 1)
        assert got["score"] == np.float32(ref.score) and got["normalized"] == np.float32(ref.normalized_score)
        assert got["counts"] == (ok, ng, 0)


def test_a_port_in_use_is_a_clear_start_error(tmp_path: Path, bundle: Path, detector: Detector) -> None:
    pytest.importorskip("pymodbus")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        outputs = f"[outputs.modbus]\nhost = \"127.0.0.1\"\nport = {port}\n"
        cfg = load_config(toml_config(tmp_path, folder_camera("top", bundle, inbox), outputs=outputs))
        station = Station(cfg, detectors={"top": detector})
        with pytest.raises(OSError, match=f"Modbus/TCP server on 127.0.0.1:{port} did not start"):
            station.start()
