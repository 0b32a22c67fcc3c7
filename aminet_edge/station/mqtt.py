"""MQTT output (paho-mqtt): each result as JSON at QoS 1 on the camera's topic, through the on-disk outbox.

A message leaves the outbox only after the broker's PUBACK; while the broker is unreachable the messages
wait on disk and paho reconnects in the background (0.1 s doubling to 5 s). Delivery is at-least-once:
a PUBACK lost in a broker restart means the message is sent again, with the same `id` and `part_id`.
A subscriber that must not miss messages while it is itself disconnected uses a persistent session
(clean_session=False, QoS 1) on a broker with persistence on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aminet_edge.station.config import MqttConfig
from aminet_edge.station.outbox import QueuedOutput

PUBACK_TIMEOUT_S = 5.0


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise ImportError("the MQTT output needs paho-mqtt (pip install 'aminet-edge[station]')") from exc
    return mqtt


class MqttOutput(QueuedOutput):
    name = "mqtt"

    def __init__(self, cfg: MqttConfig, outbox_dir: Path, max_messages: int) -> None:
        mqtt = _paho()
        super().__init__(outbox_dir, max_messages)
        self.cfg = cfg
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=5)  # type: ignore[arg-type]

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        super().start()

    def stop(self) -> None:
        super().stop()
        self.client.disconnect()
        self.client.loop_stop()

    def deliver(self, message: dict[str, Any]) -> None:
        if not self.client.is_connected():
            raise ConnectionError(f"MQTT broker {self.cfg.host}:{self.cfg.port} not connected")
        topic = self.cfg.topic.format(camera=message["camera"])
        info = self.client.publish(topic, json.dumps(message, separators=(",", ":")), qos=1)
        info.wait_for_publish(PUBACK_TIMEOUT_S)
        if not info.is_published():
            raise TimeoutError(f"MQTT broker {self.cfg.host}:{self.cfg.port}: no PUBACK within {PUBACK_TIMEOUT_S} s")
