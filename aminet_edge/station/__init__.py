"""Inspection station: cameras in, OK/NG out to the line, every result kept (`aminet-edge station CONFIG`).

    from aminet_edge.station import Station, load_config
    station = Station(load_config("station.toml")).start()
    station.trigger("top", part_id="P-0001")       # a software-triggered camera
    station.state()                                 # per camera: source, counts, last result; per output
    station.stop()                                  # inspect what was acquired, flush the outputs

Modules: config (TOML, validated), sources (folder, video, stream), station (the per-camera pipeline),
store (SQLite results), archive (NG images, retention), outbox (on-disk queues, delivery), mqtt, webhook,
opcua (server + PLC handshake), modbus (server + PLC handshake), commands (the CLI verb).
docs/station.md has the config, the outputs, the handshake timing diagram and the delivery guarantees.
"""

from aminet_edge.station.config import EXAMPLE_CONFIG, StationConfig, StationConfigError, load_config, parse_config
from aminet_edge.station.station import Station
from aminet_edge.station.store import Record, ResultStore

__all__ = ["EXAMPLE_CONFIG", "Record", "ResultStore", "Station", "StationConfig", "StationConfigError",
           "load_config", "parse_config"]
