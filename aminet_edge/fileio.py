"""Writing users' files safely: atomic writes, and names that become paths.

- `write_atomic(path, data)` / `copy_atomic(src, path)`: the data goes to a temporary file in the same
  folder (`temp_path(path)`), is flushed and fsynced, then renamed over `path` (and the folder fsynced):
  a crash at any instant leaves the old file or the new one, never a truncated one. The temporary
  name is fixed per target, so whoever records `path` as its own also knows the one leftover a crash
  can leave behind.
- `plain_name(name, what)`: a name the product turns into a file or folder name (a served model's name)
  must be a plain identifier: no separators, no "..", not empty.
Stdlib only; every layer may use it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def plain_name(name: str, what: str = "name") -> str:
    """`name` if it is a plain identifier (1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit);
    ValueError naming `what` and the rule otherwise. Such a name is one path component, never a path."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name):
        raise ValueError(f"{what} must be 1-64 letters, digits, '_' or '-', starting with a letter or digit "
                         f"(it becomes a folder name), got {name!r}")
    return name


def temp_path(path: str | Path) -> Path:
    """The temporary file `write_atomic` uses for `path`: `.NAME.tmp` next to it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with(path: Path, fill, mode: int) -> Path:  # type: ignore[no-untyped-def]
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)  # a leftover of a crash; O_EXCL below never follows a planted link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_atomic(path: str | Path, data: bytes | str, mode: int = 0o666) -> Path:
    """Write `data` (str: UTF-8) to `path` atomically; `mode` before the umask (default: rw for all the
    umask allows, as `open` would)."""
    raw = data.encode() if isinstance(data, str) else data
    return _replace_with(Path(path), lambda f: f.write(raw), mode)


def copy_atomic(src: str | Path, path: str | Path, mode: int = 0o666) -> Path:
    """Copy the file `src` to `path` atomically (contents only; `mode` as in `write_atomic`)."""
    def fill(f) -> None:  # type: ignore[no-untyped-def]
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)

    return _replace_with(Path(path), fill, mode)
