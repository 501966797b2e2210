"""Files appearing in a directory tree, as they appear: Linux inotify through ctypes.

    with TreeWatch(root) as watch:
        for path, kind in watch.events(timeout=1.0):  # "created", "renamed", "listed"
            ...

Polling a directory misses a file that lives for a few milliseconds (a
checkpoint's temporary file, between its creation and the rename); inotify
reports its creation the moment the writer's open() returns, and the
watching process wakes at once, so a test can act while the writer is still
inside the write. Subdirectories created under the root are watched as they
appear; what one held before its watch was added is reported from a
listing, as "listed".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def available() -> bool:
    return sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None


class TreeWatch:
    """Creations and renames-into of files under `root` and the directories made in it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        self._pending: list[tuple[Path, str]] = []
        self._add(self.root)

    def _add(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {directory}")
        self._dirs[wd] = directory
        # what was made in it before the watch existed
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_dir():
                self._add(Path(entry.path))
            else:
                self._pending.append((Path(entry.path), "listed"))

    def events(self, timeout: float) -> Iterator[tuple[Path, str]]:
        """(path, "created" | "renamed" | "listed") of files, waiting up to `timeout`
        seconds for the first; new directories are watched, not reported."""
        while self._pending:
            yield self._pending.pop(0)
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return
        data = os.read(self._fd, 64 * 1024)
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            path = self._dirs.get(wd, self.root) / os.fsdecode(name)
            if mask & IN_ISDIR:
                if mask & IN_CREATE:
                    self._add(path)
            else:
                yield path, "created" if mask & IN_CREATE else "renamed"
            while self._pending:
                yield self._pending.pop(0)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> TreeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
