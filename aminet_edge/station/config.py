"""The station's TOML configuration: parsed, validated (every error names its key), one dataclass per section.

`EXAMPLE_CONFIG` is the commented example `aminet-edge station --example-config` prints; the test suite
parses it, so it cannot drift from the parser. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SOURCE_TYPES = ("folder", "video", "stream", "genicam")
TRIGGERS = ("free-run", "software", "hardware")
ACTIVATIONS = ("RisingEdge", "FallingEdge")
BACKPRESSURE = ("block", "drop-oldest")
OUTPUT_NAMES = ("mqtt", "webhook", "opcua", "modbus")

EXAMPLE_CONFIG = '''\
# aminet-edge station configuration (TOML). Relative paths are taken from this file's folder.
# Run: aminet-edge station station.toml      Results: aminet-edge station results station.toml --csv

[station]
store = "station/results.db"   # SQLite result store: one row per frame (WAL mode)
archive = "station/archive"    # NG images + overlays; the station deletes only files it wrote and recorded
archive_max_files = 10000      # retention: the oldest archived files go beyond this many (0 = no limit)
archive_max_mb = 2048          # ... or beyond this total size in MiB (0 = no limit)
outbox = "station/outbox"      # on-disk queue of each queued output (mqtt, webhook)
outbox_max = 100000            # messages one output may hold while it is down; beyond it the OLDEST is
                               # dropped and counted (the result itself stays in the store)
flush_timeout = 10.0           # seconds SIGTERM waits for the outputs to deliver their queues

[web]                          # the live view (also: aminet-edge station CONFIG --web HOST:PORT)
host = "127.0.0.1"             # the address it listens on; another one opens it to the network
port = 8090
token = ""                     # changes (sensitivity, pause/resume) need this token; "" = read-only page
ng_thumbnails = 12             # NG parts shown per camera

# Outputs, each optional. A camera sends to all of them unless it lists its own (cameras.outputs).
[outputs.mqtt]                 # QoS 1, JSON, one topic per camera, at-least-once (deduplicate by "id")
host = "127.0.0.1"
port = 1883
topic = "aminet/{camera}/result"
client_id = "aminet-station"

[outputs.webhook]              # HTTP POST of the same JSON; any 2xx answer counts as delivered
url = "http://127.0.0.1:8080/results"
timeout = 5.0

[outputs.opcua]                # OPC UA server: last result, counters and the PLC handshake per camera
endpoint = "opc.tcp://0.0.0.0:4840/aminet/"

[outputs.modbus]               # Modbus/TCP server: the same per camera in holding registers
host = "0.0.0.0"
port = 5020

[[cameras]]
name = "top"                   # letters, digits, '_' and '-': used in topics, node and file names
bundle = "runs/bottle"         # a trained bundle; or url = "http://10.0.0.5:8000" (Triton, RemoteDetector)
backend = "auto"               # Detector backend (auto, openvino, onnxruntime, tensorrt, torch, ...)
device = "cpu"                 # cpu or cuda
threshold = "normal"           # normal, f1 or a raw score
sensitivity = 0.5              # 0 flags least, 0.5 = calibrated threshold, 1 flags most; leave it out to
                               # use the bundle's (the value last set from the live view, else 0.5)
trigger = "free-run"           # free-run: every frame the source gives; software: one frame per trigger
                               # (OPC UA / Modbus handshake or Station.trigger), part id from the trigger;
                               # hardware: one frame per pulse on a GenICam camera's input line (below)
queue = 4                      # frames waiting between acquisition and inspection
backpressure = "block"         # block: acquisition waits; drop-oldest: the oldest waiting frame is
                               # dropped, counted, and recorded as an ERROR result
archive_ng = true              # keep NG images and overlays in the archive
grab_timeout = 5.0             # software trigger: seconds to wait for the frame, else an ERROR result

[cameras.source]
type = "folder"                # folder (watched), video (a file), stream (RTSP URL or USB camera index),
                               # genicam (GigE Vision / USB3 Vision through Aravis: path = device id)
path = "inbox/top"
pattern = "*.png"              # folder: file names to take (glob)
settle = 0.2                   # folder: seconds a file's size must stay unchanged before it is read

[[cameras]]
name = "side"
bundle = "runs/bottle"
trigger = "software"
outputs = ["opcua", "mqtt"]

[cameras.source]
type = "video"
path = "side.mp4"

[[cameras]]
name = "line"
bundle = "runs/bottle"
trigger = "hardware"           # the camera triggers itself on a pulse of its input line: part id = the
                               # camera's frame id, time = when the frame reached this machine
trigger_line = "Line0"         # the input wired to the part sensor (the camera's TriggerSource entry)
trigger_activation = "RisingEdge"  # or FallingEdge; leave it out to keep the camera's setting

[cameras.source]
type = "genicam"
path = "Basler-21234567"       # the device id as arv-tool-0.8 lists it
'''


class StationConfigError(ValueError):
    """A config problem; the message names the file and the key (e.g. `cameras[1].source.path`)."""


@dataclass(frozen=True)
class SourceConfig:
    """Where a camera's frames come from. folder: path, pattern, settle (s), poll (s); video: path, loop;
    stream: path (an RTSP/HTTP URL, or a USB camera index as a string of digits); genicam: path (the
    Aravis device id, "" = the first camera found)."""

    type: str
    path: str
    pattern: str = "*"
    settle: float = 0.2
    poll: float = 0.05
    loop: bool = False


@dataclass(frozen=True)
class CameraConfig:
    """One camera: its model (bundle or Triton url), decision rule, trigger mode, queue and outputs."""

    name: str
    source: SourceConfig
    bundle: str | None = None
    url: str | None = None
    backend: str = "auto"
    device: str = "cpu"
    threshold: str | float = "normal"
    sensitivity: float | None = None  # None: the bundle's (calibration.sensitivity)
    trigger: str = "free-run"
    trigger_line: str = ""  # hardware: the camera's TriggerSource entry (e.g. "Line0")
    trigger_activation: str = ""  # hardware: RisingEdge or FallingEdge; "" = the camera's setting
    queue: int = 4
    backpressure: str = "block"
    archive_ng: bool = True
    outputs: tuple[str, ...] = ()
    grab_timeout: float = 5.0


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = "aminet/{camera}/result"
    client_id: str = "aminet-station"
    keepalive: int = 30


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: float = 5.0


@dataclass(frozen=True)
class OpcuaConfig:
    endpoint: str = "opc.tcp://0.0.0.0:4840/aminet/"
    namespace: str = "urn:aminet-edge:station"


@dataclass(frozen=True)
class ModbusConfig:
    host: str = "0.0.0.0"
    port: int = 5020


@dataclass(frozen=True)
class WebConfig:
    """The live view (aminet_edge.station.web): where it listens, the token that allows changes ("" = none)."""

    host: str = "127.0.0.1"
    port: int = 8090
    token: str = ""
    ng_thumbnails: int = 12


@dataclass(frozen=True)
class StationConfig:
    """The whole station; paths are absolute (resolved against the config file's folder)."""

    cameras: tuple[CameraConfig, ...]
    store: Path
    archive: Path
    outbox: Path
    archive_max_files: int = 10000
    archive_max_bytes: int = 2048 << 20
    outbox_max: int = 100000
    flush_timeout: float = 10.0
    mqtt: MqttConfig | None = None
    webhook: WebhookConfig | None = None
    opcua: OpcuaConfig | None = None
    modbus: ModbusConfig | None = None
    web: WebConfig | None = None
    source: str = "<config>"

    def camera(self, name: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"no camera named {name!r} (cameras: {', '.join(c.name for c in self.cameras)})")


# ---- validation helpers: each takes the key path for its message ---------------------------------
class _Table:
    """A TOML table being read: typed getters that name `where.key` in errors, and unknown-key detection."""

    def __init__(self, data: Any, where: str, origin: str) -> None:
        if not isinstance(data, dict):
            raise StationConfigError(f"{origin}: {where}: must be a table, got {type(data).__name__}")
        self.data, self.where, self.origin = data, where, origin
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, problem: str) -> StationConfigError:
        return StationConfigError(f"{self.origin}: {self.key(name)}: {problem}")

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any = ..., what: str = "") -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is ...:
                raise self.fail(name, "missing (required)")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise self.fail(name, f"must be {what or kinds}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(name, f"must be {what or getattr(kinds, '__name__', kinds)}, got {value!r}")
        return value

    def text(self, name: str, default: Any = ..., choices: tuple[str, ...] = ()) -> Any:
        value = self.get(name, str, default, "a string")
        if choices and value not in choices and value is not default:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(value, str) and not value.strip() and not choices and name in self.data:
            raise self.fail(name, "must not be empty")
        return value

    def number(self, name: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
        value = float(self.get(name, (int, float), default, "a number"))
        if not (low <= value <= high) or math.isnan(value):
            raise self.fail(name, f"must be in [{low}, {high}], got {value!r}")
        return value

    def integer(self, name: str, default: int, low: int = 0, high: int = 2**31) -> int:
        value = self.get(name, int, default, "an integer")
        if not low <= value <= high:
            raise self.fail(name, f"must be an integer in [{low}, {high}], got {value!r}")
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        return bool(self.get(name, bool, default, "true or false"))

    def table(self, name: str) -> "_Table | None":
        self.used.add(name)
        return None if name not in self.data else _Table(self.data[name], self.key(name), self.origin)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key (a typo?)")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _name(t: _Table) -> str:
    name = t.text("name")
    if not all(c.isalnum() or c in "_-" for c in name):
        raise t.fail("name", f"may hold letters, digits, '_' and '-' only (it names topics, nodes and files), "
                             f"got {name!r}")
    return name


def _source(t: _Table, base: Path, check_paths: bool) -> SourceConfig:
    kind = t.text("type", choices=SOURCE_TYPES)
    path = t.text("path", "" if kind == "genicam" else ...)
    src = SourceConfig(type=kind, path=path, pattern=t.text("pattern", "*"),
                       settle=t.number("settle", 0.2, 0.0, 3600.0), poll=t.number("poll", 0.05, 0.001, 60.0),
                       loop=t.flag("loop", False))
    t.done()
    if kind in ("folder", "video"):
        full = _path(base, path)
        src = SourceConfig(**{**src.__dict__, "path": str(full)})
        if check_paths and kind == "folder" and not full.is_dir():
            raise t.fail("path", f"{full} is not a folder")
        if check_paths and kind == "video" and not full.is_file():
            raise t.fail("path", f"{full} is not a file")
    return src


def _line_trigger(t: _Table, trigger: str, source_type: str) -> tuple[str, str]:
    """(trigger_line, trigger_activation) of a camera; both only with trigger = "hardware" on a genicam source."""
    if trigger != "hardware":
        for key in ("trigger_line", "trigger_activation"):
            if key in t.data:
                raise t.fail(key, f'only for trigger = "hardware" (this camera has trigger = "{trigger}")')
        return "", ""
    if source_type != "genicam":
        raise t.fail("trigger", f'"hardware" needs a genicam source (a camera with input lines), not '
                                f'{source_type!r}: use "free-run" or "software"')
    if "trigger_line" not in t.data:
        raise t.fail("trigger_line", 'missing (required with trigger = "hardware"): the camera input wired to '
                                     'the part sensor, e.g. "Line0"')
    line = t.text("trigger_line")
    if line == "Software" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", line):
        raise t.fail("trigger_line", f'must name a camera input line such as "Line0", got {line!r}')
    return line, t.text("trigger_activation", "", ACTIVATIONS)


def _camera(t: _Table, base: Path, outputs: tuple[str, ...], check_paths: bool) -> CameraConfig:
    name = _name(t)
    bundle, url = t.get("bundle", str, None, "a string"), t.get("url", str, None, "a string")
    if (bundle is None) == (url is None):
        raise t.fail("bundle", "give exactly one of bundle (a trained bundle folder) or url (a Triton server)")
    if bundle is not None:
        bundle = str(_path(base, bundle))
        if check_paths and not (Path(bundle) / "config.json").is_file():
            raise t.fail("bundle", f"{bundle} is not a bundle (no config.json)")
    threshold: str | float = t.get("threshold", (str, int, float), "normal", "'normal', 'f1' or a number")
    if isinstance(threshold, str) and threshold not in ("normal", "f1"):
        raise t.fail("threshold", f"must be 'normal', 'f1' or a number, got {threshold!r}")
    wanted = t.get("outputs", list, list(outputs), "a list of output names")
    for i, out in enumerate(wanted):
        if out not in outputs:
            raise t.fail(f"outputs[{i}]", f"{out!r} is not configured (configured: {', '.join(outputs) or 'none'})")
    source_table = t.table("source")
    if source_table is None:
        raise t.fail("source", "missing (required): a [cameras.source] table")
    source = _source(source_table, base, check_paths)
    trigger = t.text("trigger", "free-run", TRIGGERS)
    line, activation = _line_trigger(t, trigger, source.type)
    cam = CameraConfig(
        name=name, source=source, bundle=bundle, url=url,
        backend=t.text("backend", "auto"), device=t.text("device", "cpu"), threshold=threshold,
        sensitivity=None if "sensitivity" not in t.data else t.number("sensitivity", 0.5, 0.0, 1.0),
        trigger=trigger, trigger_line=line, trigger_activation=activation,
        queue=t.integer("queue", 4, 1, 10000), backpressure=t.text("backpressure", "block", BACKPRESSURE),
        archive_ng=t.flag("archive_ng", True), outputs=tuple(wanted),
        grab_timeout=t.number("grab_timeout", 5.0, 0.001, 3600.0))
    t.done()
    return cam


def parse_config(data: dict[str, Any], base: Path, origin: str = "<config>",
                 check_paths: bool = True) -> StationConfig:
    """Validate the parsed TOML `data`; `base` resolves relative paths. check_paths: bundles and source
    folders/files must exist."""
    root = _Table(data, "", origin)
    st = root.table("station") or _Table({}, "station", origin)
    outs = root.table("outputs") or _Table({}, "outputs", origin)
    mqtt = webhook = opcua = modbus = None
    if (t := outs.table("mqtt")) is not None:
        mqtt = MqttConfig(host=t.text("host", "127.0.0.1"), port=t.integer("port", 1883, 1, 65535),
                          topic=t.text("topic", "aminet/{camera}/result"),
                          client_id=t.text("client_id", "aminet-station"), keepalive=t.integer("keepalive", 30, 1))
        if "{camera}" not in mqtt.topic:
            raise t.fail("topic", f"must contain {{camera}} (one topic per camera), got {mqtt.topic!r}")
        t.done()
    if (t := outs.table("webhook")) is not None:
        webhook = WebhookConfig(url=t.text("url"), timeout=t.number("timeout", 5.0, 0.01, 600))
        if not webhook.url.startswith(("http://", "https://")):
            raise t.fail("url", f"must start with http:// or https://, got {webhook.url!r}")
        t.done()
    if (t := outs.table("opcua")) is not None:
        opcua = OpcuaConfig(endpoint=t.text("endpoint", OpcuaConfig.endpoint),
                            namespace=t.text("namespace", OpcuaConfig.namespace))
        if not opcua.endpoint.startswith("opc.tcp://"):
            raise t.fail("endpoint", f"must start with opc.tcp://, got {opcua.endpoint!r}")
        t.done()
    if (t := outs.table("modbus")) is not None:
        modbus = ModbusConfig(host=t.text("host", "0.0.0.0"), port=t.integer("port", 5020, 1, 65535))
        t.done()
    outs.done()
    web = None
    if (t := root.table("web")) is not None:
        web = WebConfig(host=t.text("host", "127.0.0.1"), port=t.integer("port", 8090, 0, 65535),
                        token=t.get("token", str, "", "a string"),
                        ng_thumbnails=t.integer("ng_thumbnails", 12, 0, 1000))
        if web.token and len(web.token) < 16:
            raise t.fail("token", f"must be 16 characters or more (or \"\" for a read-only page), got {len(web.token)}")
        t.done()
    configured = tuple(n for n, c in zip(OUTPUT_NAMES, (mqtt, webhook, opcua, modbus)) if c is not None)
    cams_data = root.get("cameras", list, ..., "an array of [[cameras]] tables")
    if not cams_data:
        raise root.fail("cameras", "at least one [[cameras]] table is needed")
    cameras = tuple(_camera(_Table(c, f"cameras[{i}]", origin), base, configured, check_paths)
                    for i, c in enumerate(cams_data))
    names = [c.name for c in cameras]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise StationConfigError(f"{origin}: cameras[{i}].name: {n!r} is used twice")
    cfg = StationConfig(
        cameras=cameras, store=_path(base, st.text("store", "station/results.db")),
        archive=_path(base, st.text("archive", "station/archive")),
        outbox=_path(base, st.text("outbox", "station/outbox")),
        archive_max_files=st.integer("archive_max_files", 10000),
        archive_max_bytes=int(st.number("archive_max_mb", 2048.0) * (1 << 20)),
        outbox_max=st.integer("outbox_max", 100000, 1), flush_timeout=st.number("flush_timeout", 10.0, 0, 3600),
        mqtt=mqtt, webhook=webhook, opcua=opcua, modbus=modbus, web=web, source=origin)
    st.done()
    root.done()
    return cfg


def load_config(path: str | Path, check_paths: bool = True) -> StationConfig:
    """Read and validate a station TOML file; StationConfigError names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StationConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StationConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(data, path.resolve().parent, str(path), check_paths)
