"""Webhook output: each result as a JSON HTTP POST, through the on-disk outbox (any 2xx = delivered).

Any other answer, a refused connection or a timeout keeps the message queued and retried in order
(at-least-once: the receiver deduplicates by `id`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aminet_edge.station.config import WebhookConfig
from aminet_edge.station.outbox import QueuedOutput


class WebhookOutput(QueuedOutput):
    name = "webhook"

    def __init__(self, cfg: WebhookConfig, outbox_dir: Path, max_messages: int) -> None:
        super().__init__(outbox_dir, max_messages)
        self.cfg = cfg

    def deliver(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        request = urllib.request.Request(self.cfg.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"webhook {self.cfg.url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"webhook {self.cfg.url}: {getattr(exc, 'reason', exc)}") from exc
        if not 200 <= status < 300:
            raise ConnectionError(f"webhook {self.cfg.url} answered HTTP {status}")
