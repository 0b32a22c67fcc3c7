"""The result store: one SQLite row per inspected frame (WAL mode, indexed), and the NG archive's file records.

Table `results` (one row per frame, in the order the station decided them):
    id              INTEGER primary key, increasing: the result's id in every output message
    time            REAL, seconds since the epoch (UTC) of the trigger (software) or acquisition (free-run)
    camera, part_id TEXT; part_id comes from the trigger, else the file stem / video frame number
    ref             TEXT, what the frame was: file path, "video.mp4#17", "trigger" when no frame came
    origin          TEXT, what started it: free-run, hardware, api, opcua, modbus
    score           REAL raw image score (NULL for ERROR); normalized REAL score / image threshold
    decision        TEXT OK | NG | ERROR
    latency_ms      REAL, trigger/acquisition to decision
    backend         TEXT, the Detector backend (e.g. openvino, triton:aminet)
    weights_sha256  TEXT, the bundle's weights the model was made from
    error           TEXT, why a frame gave no verdict (NULL when OK/NG)
    image_path      TEXT, the archived NG image (NULL when not archived or since deleted by retention)
Table `sensitivity_changes`: the audit of sensitivity changes made while running (the live view):
    id, time (epoch s, UTC), camera, old, new (REAL), address TEXT (the client's IP address)
Table `archive_files`: every file the NG archive wrote (path, bytes, result id); retention deletes the
oldest of these only, and only inside the archive folder.

Thread safety: one connection shared under a lock (the station's camera threads all write here).
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DECISIONS = ("OK", "NG", "ERROR")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, camera TEXT NOT NULL, part_id TEXT NOT NULL,
    ref TEXT NOT NULL, origin TEXT NOT NULL, score REAL, normalized REAL, decision TEXT NOT NULL,
    latency_ms REAL, backend TEXT, weights_sha256 TEXT, error TEXT, image_path TEXT);
CREATE INDEX IF NOT EXISTS results_time ON results (time);
CREATE INDEX IF NOT EXISTS results_camera_time ON results (camera, time);
CREATE INDEX IF NOT EXISTS results_camera_ref ON results (camera, ref);
CREATE TABLE IF NOT EXISTS sensitivity_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, camera TEXT NOT NULL, old REAL NOT NULL,
    new REAL NOT NULL, address TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS archive_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT, result_id INTEGER NOT NULL, path TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL);
"""
COLUMNS = ("id", "time", "camera", "part_id", "ref", "origin", "score", "normalized", "decision", "latency_ms",
           "backend", "weights_sha256", "error", "image_path")


def iso_time(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. 2026-12-07T01:53:10.123+00:00."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Record:
    """One frame's outcome as stored and sent (columns of `results`; id is 0 until stored)."""

    time: float
    camera: str
    part_id: str
    ref: str
    origin: str
    decision: str
    score: float | None = None
    normalized: float | None = None
    latency_ms: float | None = None
    backend: str = ""
    weights_sha256: str = ""
    error: str | None = None
    image_path: str | None = None
    id: int = 0

    def message(self) -> dict[str, Any]:
        """The JSON message every output sends: the row plus `time_iso`; deduplicate by `id`."""
        out = asdict(self)
        out["time_iso"] = iso_time(self.time)
        return out


class ResultStore:
    """SQLite result store at `path` (created with its folder); see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut may lose the last commits only
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: Record) -> int:
        """Insert `record`, set and return its id."""
        row = asdict(record)
        row.pop("id")
        with self._lock:
            cur = self._db.execute(f"INSERT INTO results ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                   tuple(row.values()))
        record.id = int(cur.lastrowid or 0)
        return record.id

    def refs(self, camera: str) -> set[str]:
        """Refs (file paths, ...) already inspected by `camera`: a restarted folder source skips them."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT ref FROM results WHERE camera = ?", (camera,))}

    def counts(self, camera: str) -> dict[str, int]:
        """{"OK": n, "NG": n, "ERROR": n} of `camera` so far (counters resume from the store on restart)."""
        with self._lock:
            rows = self._db.execute("SELECT decision, COUNT(*) FROM results WHERE camera = ? GROUP BY decision",
                                    (camera,)).fetchall()
        out = dict.fromkeys(DECISIONS, 0)
        out.update({d: int(n) for d, n in rows})
        return out

    def query(self, since: float | None = None, camera: str | None = None) -> Iterator[dict[str, Any]]:
        """Rows as dicts in id order, optionally from time `since` (epoch s) and of one camera."""
        where: list[str] = []
        args: list[float | str] = []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if camera is not None:
            where.append("camera = ?")
            args.append(camera)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        for row in rows:
            yield dict(zip(COLUMNS, row))

    def last_ng(self, camera: str, limit: int) -> list[dict[str, Any]]:
        """The `limit` latest NG rows of `camera` that still have an archived image, newest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE camera = ? AND decision = 'NG' "
                                    "AND image_path IS NOT NULL ORDER BY id DESC LIMIT ?", (camera, limit)).fetchall()
        return [dict(zip(COLUMNS, row)) for row in rows]

    def row(self, result_id: int) -> dict[str, Any] | None:
        """The row of result `result_id`, None if there is none."""
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM results WHERE id = ?", (result_id,)).fetchone()
        return None if row is None else dict(zip(COLUMNS, row))

    def add_sensitivity_change(self, when: float, camera: str, old: float, new: float, address: str) -> int:
        """Audit one sensitivity change (table `sensitivity_changes`); returns its id."""
        with self._lock:
            cur = self._db.execute("INSERT INTO sensitivity_changes (time, camera, old, new, address) "
                                   "VALUES (?, ?, ?, ?, ?)", (when, camera, old, new, address))
        return int(cur.lastrowid or 0)

    def sensitivity_changes(self, camera: str | None = None) -> list[dict[str, Any]]:
        """The audited sensitivity changes in order, optionally of one camera."""
        sql = "SELECT id, time, camera, old, new, address FROM sensitivity_changes"
        args: tuple[str, ...] = ()
        if camera is not None:
            sql, args = sql + " WHERE camera = ?", (camera,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [dict(zip(("id", "time", "camera", "old", "new", "address"), r)) for r in rows]

    # -- archive file records (aminet_edge.station.archive owns the files) -----------------------
    def add_file(self, result_id: int, path: Path, size: int, main: bool) -> None:
        """Record an archived file; `main` (the image, not its overlay) also goes into results.image_path."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO archive_files (result_id, path, bytes) VALUES (?, ?, ?)",
                             (result_id, str(path), size))
            if main:
                self._db.execute("UPDATE results SET image_path = ? WHERE id = ?", (str(path), result_id))

    def archive_usage(self) -> tuple[int, int]:
        """(files, bytes) the archive holds by the records."""
        with self._lock:
            n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM archive_files").fetchone()
        return int(n), int(size)

    def oldest_files(self, limit: int) -> list[tuple[int, str, int]]:
        """(row id, path, bytes) of the `limit` oldest archived files."""
        with self._lock:
            return [(int(i), str(p), int(b)) for i, p, b in self._db.execute(
                "SELECT id, path, bytes FROM archive_files ORDER BY id LIMIT ?", (limit,))]

    def forget_file(self, row_id: int, path: str) -> None:
        """Drop an archived file's record (after its deletion); its result row keeps no path to it."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM archive_files WHERE id = ?", (row_id,))
            self._db.execute("UPDATE results SET image_path = NULL WHERE image_path = ?", (path,))


def rows_to_csv(rows: Iterator[dict[str, Any]]) -> str:
    """CSV text with a header of COLUMNS plus time_iso."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, "time_iso"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "time_iso": iso_time(row["time"])})
    return buf.getvalue()
