"""The NG archive: each NG frame's image and overlay as PNGs, kept within a count and a size.

Layout: ARCHIVE/<camera>/<YYYYMMDD>/<result id>_<part id>.png and ..._overlay.png (image | heatmap |
predicted mask, `aminet_edge.evaluation.heatmaps.save_result_overlay`). Every file is written atomically
(temp file in the same folder, fsync, rename) and recorded in the result store before retention runs.
Retention deletes the oldest recorded files until both limits hold; it deletes only files that the store
records and that resolve inside ARCHIVE, so nothing a user put there (or anywhere else) is touched.

Writing a PNG pair with fsync costs ~100 ms on a plain disk, more than a model call, so it runs in the
archive's own thread behind a bounded queue (QUEUE frames): inspection never waits for the disk. When the
queue is full the NG image is not archived (its result is stored and sent as usual), logged and counted
in `skipped`.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aminet_edge.runtime.result import Result
from aminet_edge.station.store import ResultStore

log = logging.getLogger("aminet_edge.station")

QUEUE = 64


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)[:80] or "part"


def write_png_atomic(path: Path, pixels: np.ndarray) -> int:
    """Write (H, W, 3) uint8 `pixels` as a PNG at a new `path` atomically; returns its size in bytes.
    FileExistsError when `path` exists: an archived image (e.g. of a result store started afresh, whose
    result numbers begin again) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(pixels).save(f, format="PNG", compress_level=1)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # never over an existing file (os.replace would be)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path.stat().st_size


def frame_rgb(image: Any, bgr: bool) -> np.ndarray:
    """A frame (a file path, or an (H, W[, C]) array in `bgr` or RGB order) as (H, W, 3) float32 RGB in [0, 1]."""
    from aminet_edge.data.images import read_image, to_rgb_float

    return read_image(image) if isinstance(image, (str, Path)) else to_rgb_float(image, bgr=bgr)


class NgArchive:
    """Archive of NG images under `root`, limited to `max_files` files and `max_bytes` (0 = no limit).

    `submit` queues a frame and returns at once; `close` writes what is queued and stops the thread.
    """

    def __init__(self, root: str | Path, store: ResultStore, max_files: int, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.store, self.max_files, self.max_bytes = store, max_files, max_bytes
        self.deleted = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Path, int, Any, bool, Result] | None] = queue.Queue(QUEUE)
        self._thread = threading.Thread(target=self._run, name="aminet-archive", daemon=True)
        self._thread.start()

    def path_for(self, result_id: int, camera: str, part_id: str, when: float) -> Path:
        """Where result `result_id`'s image goes; its overlay is beside it, named ..._overlay.png. A name
        taken (by a station with another result store, whose numbers began again) gets a suffix -2, -3..."""
        folder = self.root / camera / time.strftime("%Y%m%d", time.gmtime(when))
        stem, k = f"{result_id:09d}_{_safe(part_id)}", 1
        path = folder / f"{stem}.png"
        while os.path.lexists(path) or os.path.lexists(folder / f"{path.stem}_overlay.png"):
            k += 1
            path = folder / f"{stem}-{k}.png"
        return path

    def submit(self, result_id: int, camera: str, part_id: str, when: float, image: Any, bgr: bool,
               result: Result) -> Path | None:
        """Queue an NG frame (`image`: a file path or an (H, W[, C]) array, `bgr` its channel order) for
        archiving; returns the image's path-to-be, or None when the queue is full (skipped and counted)."""
        path = self.path_for(result_id, camera, part_id, when)
        try:
            self._queue.put_nowait((path, result_id, image, bgr, result))
        except queue.Full:
            self.skipped += 1
            log.warning("archive: queue full (%d frames), NG image of result %d not archived", QUEUE, result_id)
            return None
        return path

    def close(self) -> None:
        """Write the queued frames, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            path, result_id, image, bgr, result = item
            try:
                self.save(path, result_id, frame_rgb(image, bgr), result)
            except Exception as exc:  # noqa: BLE001 - a full disk or a vanished file must not stop the archive
                log.error("archive: NG image of result %d not archived: %s", result_id, exc)

    def save(self, path: Path, result_id: int, image: np.ndarray, result: Result) -> None:
        """Write one NG frame at `path`: `image` (H, W, 3) float32 RGB in [0, 1] and its overlay; record
        both, then apply retention."""
        from aminet_edge.evaluation.heatmaps import result_overlay

        overlay = path.with_name(f"{path.stem}_overlay.png")
        for existing in (path, overlay):
            if os.path.lexists(existing):
                raise FileExistsError(f"{existing} exists (archived by a station with another result store?): "
                                      "left alone")
        size = write_png_atomic(path, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        overlay_size = write_png_atomic(overlay, result_overlay(image, result))
        with self._lock:
            self.store.add_file(result_id, path, size, main=True)
            self.store.add_file(result_id, overlay, overlay_size, main=False)
            self._enforce()

    def enforce(self) -> None:
        """Delete the oldest recorded files until the count and size limits hold."""
        with self._lock:
            self._enforce()

    def _enforce(self) -> None:
        """enforce, with self._lock held."""
        files, size = self.store.archive_usage()

        def over() -> bool:
            return bool((self.max_files and files > self.max_files) or (self.max_bytes and size > self.max_bytes))

        while over():
            batch = self.store.oldest_files(max(1, files - self.max_files) if self.max_files else 16)
            if not batch:
                return
            for row_id, path, nbytes in batch:
                if not over():
                    return
                removed = self._delete(Path(path))
                self.store.forget_file(row_id, path)
                self.deleted += removed
                files, size = files - 1, size - nbytes

    def usage(self) -> dict[str, int]:
        """{"files", "bytes", "deleted", "skipped"}, consistent with each other (not mid-retention)."""
        with self._lock:
            files, size = self.store.archive_usage()
            return {"files": files, "bytes": size, "deleted": self.deleted, "skipped": self.skipped}

    def _delete(self, path: Path) -> bool:
        """Delete an archived file if it lies inside the archive; True if a file was deleted."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):  # a record pointing elsewhere is dropped, never followed
            log.warning("archive record %s lies outside %s: record dropped, file left alone", path, self.root)
            return False
        try:
            resolved.unlink()
            return True
        except FileNotFoundError:
            return False
