"""An exclusive lock on a file that says who holds it: one coordinator per state folder, one
participating process per device folder.

`flock` locks belong to the open file, so a killed holder releases its lock at once (nothing
stale to clean up after `kill -9`), and the descriptor is close-on-exec, so a child process (a
TFF worker, say) never inherits it. The holder writes its pid, host and start time into the
file, so that whoever is refused can be told who holds it; the file is emptied on release.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from protocol.errors import ProtocolError

_MAX_HOLDER_BYTES = 4096


class HeldElsewhere(ProtocolError):
    """Another process holds the lock; `holder` is what it wrote (None if unreadable)."""

    def __init__(self, holder: dict[str, object] | None) -> None:
        super().__init__(describe_holder(holder))
        self.holder = holder


class HolderLock:
    """Held from `acquire` until `release` (or the process ends). OSError for a file that cannot
    be opened or written; the callers turn both into their own errors, naming their folder."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, grace_s: float = 1.0) -> None:
        """Take the lock, waiting up to `grace_s` for a holder that is about to let go (a probe
        holds it for an instant); raise HeldElsewhere if it is still held then."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + grace_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise HeldElsewhere(_read(fd)) from None
                    time.sleep(0.05)
            _write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale name for the next reader
            os.close(fd)  # releases the flock


def read_holder(path: Path | str) -> dict[str, object] | None:
    """Who holds the lock at `path` now, or None if nobody does (or there is no such file).

    Probes with a shared lock released at once, so it never blocks a holder for long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd) or {}
    finally:
        os.close(fd)
    return None


def describe_holder(info: dict[str, object] | None) -> str:
    if not info:
        return "holder unknown"
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    return " ".join(parts)


def _write_holder(fd: int) -> None:
    since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text + b"\n", 0)
    os.fsync(fd)


def _read(fd: int, *, wait_s: float = 1.0) -> dict[str, object] | None:
    """What the holder wrote, waiting briefly for a holder that has just taken the lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(os.pread(fd, _MAX_HOLDER_BYTES, 0).decode("utf-8"))
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
