"""Writing and deleting files a user keeps: atomic writes and owned deletes. Standard library only.

Atomic write: the content goes to a temporary file in the target's directory (created with mode
0666 & ~umask, like any new file), is flushed and fsynced, then renamed over the target and the
directory fsynced. A crash at any instant leaves the old file or the new one, never a mix; at worst a
hidden `.NAME.*.tmp` file is left beside it.

Owned delete: only files named by the caller's own record, inside the given root, reached through no
symbolic link, and regular files (never a link, a directory or a device); anything else is left and
logged.

    atomic_write_bytes(path, data) / atomic_write_text(path, text)   write a file atomically
    atomic_replace(path, produce)      `produce(tmp)` writes the content (e.g. a library's save(path))
    write_temp(path, produce) -> tmp   the first half: fsynced content beside `path`, not yet in place
    install(tmp, path)                 the second half: rename into place, fsync the directory
    TEMP_NAME                          matches the temporary files' names
    remove_owned(root, rels, reason)   delete recorded files under root; returns those deleted
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

log = logging.getLogger("aminet_edge.files")
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # write_temp's file names (left behind only by a crash)


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(path: str | Path, produce: Callable[[Path], object]) -> Path:
    """A new temporary file beside `path` holding what `produce(tmp)` wrote to it, fsynced; removed
    again when `produce` raises. The caller installs it (`install`) or deletes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # TEMP_NAME
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies, as to any new file
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        produce(tmp)
        now = stat.S_IMODE(os.stat(tmp).st_mode)
        if now | mode != now:  # a writer that replaced the file narrower (safetensors: 0600); bits it added stay
            os.chmod(tmp, now | mode)
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def install(tmp: str | Path, path: str | Path) -> Path:
    """Rename `tmp` (from `write_temp`) over `path` and fsync the directory: the rename is durable."""
    path = Path(path)
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)
    return path


def atomic_replace(path: str | Path, produce: Callable[[Path], object]) -> Path:
    """Write `path` atomically with `produce(tmp)`, which writes the whole content to the path it gets.
    When the rename fails, the temporary is removed and `path` is as it was."""
    tmp = write_temp(path, produce)
    try:
        return install(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_replace(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _owned(root: Path, rel: str) -> Path | None:
    """root / rel when rel is a relative path without '..' whose every directory below `root` is a real
    directory (no symbolic link) and which is itself a regular file; else None."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return None
    path = root
    for part in pure.parts[:-1]:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
    path = path / pure.parts[-1]
    try:
        return path if stat.S_ISREG(os.lstat(path).st_mode) else None
    except OSError:
        return None


def remove_owned(root: str | Path, rels: Iterable[str], reason: str) -> list[Path]:
    """Delete the files `rels` (paths relative to `root`, as the caller recorded them), each logged with
    `reason`. A path leaving `root`, passing through a symbolic link, or naming anything but a regular
    file is not deleted (logged when it exists). Returns the files deleted."""
    root = Path(root)
    removed = []
    for rel in dict.fromkeys(rels):  # once each, in order
        path = _owned(root, rel)
        if path is None:
            if rel and os.path.lexists(root / rel):
                log.warning("left %s in place: not a regular file reached without a symbolic link inside %s",
                            root / rel, root)
            continue
        path.unlink()
        removed.append(path)
        log.info("removed %s: %s", path, reason)
    if removed:
        _fsync(root, directory=True)
    return removed
