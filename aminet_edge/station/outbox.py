"""Reliable delivery: an on-disk queue per output and the thread that drains it in order.

`Outbox` is a SQLite table of messages (seq, payload) in OUTBOX/<output>.db. The station appends each
result's message (a local write, so a dead output never stalls inspection); `QueuedOutput`'s sender
thread delivers the oldest message, deletes it only once the output confirmed it (MQTT PUBACK, HTTP
2xx), and retries the same message with back-off (0.05 s doubling to 5 s) until it goes through: in
order, at least once. A message whose confirmation was lost is sent again, so a receiver may see one
twice, always with the same `id` (deduplicate by it). Messages survive a restart and are sent then.

Bound: `max_messages` per output. When it is full the OLDEST message is deleted to make room (the line
cares most about recent results; every result stays in the result store regardless); each one is counted
in `dropped` (persisted, in the queue's `meta` table).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("aminet_edge.station")

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 5.0


class Outbox:
    """A bounded, persistent FIFO of JSON messages (thread-safe)."""

    def __init__(self, path: str | Path, max_messages: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = int(max_messages)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript("CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                               "payload TEXT NOT NULL);"
                               "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                               "INSERT OR IGNORE INTO meta VALUES ('dropped', 0);")
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    @property
    def depth(self) -> int:
        """Messages waiting."""
        return self._depth

    @property
    def dropped(self) -> int:
        """Messages deleted unsent because the queue was full (since the queue file was created)."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])

    def put(self, message: dict[str, Any]) -> None:
        """Append `message`; when full, delete the oldest first (counted)."""
        payload = json.dumps(message, separators=(",", ":"))
        with self._lock, self._db:
            self._db.execute("BEGIN")
            over = self._depth + 1 - self.max_messages
            if over > 0:
                self._db.execute("DELETE FROM queue WHERE seq IN (SELECT seq FROM queue ORDER BY seq LIMIT ?)",
                                 (over,))
                self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (over,))
                self._depth -= over
            self._db.execute("INSERT INTO queue (payload) VALUES (?)", (payload,))
            self._depth += 1

    def peek(self) -> tuple[int, dict[str, Any]] | None:
        """(seq, message) of the oldest message, or None."""
        with self._lock:
            row = self._db.execute("SELECT seq, payload FROM queue ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def ack(self, seq: int) -> None:
        """Delete message `seq` (delivered)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,))
            self._depth -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


class QueuedOutput:
    """An output whose messages go through an Outbox; subclasses implement `deliver` (raise on failure)
    and may override `start` / `stop` for their connection. Thread: one sender per output."""

    name = "output"

    def __init__(self, outbox_dir: Path, max_messages: int) -> None:
        self.outbox = Outbox(Path(outbox_dir) / f"{self.name}.db", max_messages)
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"aminet-{self.name}", daemon=True)

    def deliver(self, message: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def publish(self, message: dict[str, Any]) -> None:
        """Queue `message` for delivery (returns at once)."""
        self.outbox.put(message)
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the queue to empty; True if it did."""
        deadline = time.monotonic() + timeout
        while self.outbox.depth and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        return self.outbox.depth == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.outbox.close()

    def state(self) -> dict[str, Any]:
        """Queue depth, delivered / dropped / failed counts and the last error (for status views)."""
        return {"queued": self.outbox.depth, "delivered": self.delivered, "dropped": self.outbox.dropped,
                "failures": self.failures, "last_error": self.last_error}

    def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stop.is_set():
            item = self.outbox.peek()
            if item is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            seq, message = item
            try:
                self.deliver(message)
            except Exception as exc:  # noqa: BLE001 - any failure of the output: keep the message, retry later
                self.failures += 1
                if self.last_error != str(exc):
                    log.warning("%s: delivery failed, %d message(s) queued on disk (%s)", self.name,
                                self.outbox.depth, exc)
                self.last_error = str(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.outbox.ack(seq)
            self.delivered += 1
            self.last_error = None
            backoff = BACKOFF_FIRST_S
