"""One participation per device folder: `join` and the fleet hold `.join.lock` while they take part.

Two processes taking part in rounds as one device would sign with one key, race on its identity
files and check in twice. The device lock (`.lock`, device_lock.py) cannot serve: a command holds
it only while it runs, and install, rate or recommend must keep working while a join runs. So
taking part has its own lock file, held exclusively (flock) for the whole of a join's or a
fleet's life, with the holder's pid written in it so that a refusal can name it. `flock` locks
belong to the open file, so a killed holder releases it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from edge_client.errors import DeviceError

JOIN_LOCK_FILE = ".join.lock"
_HOLDER_WAIT_S = 1.0  # a new holder writes its pid right after taking the lock


class JoinLock:
    """The participation lock of one device folder; `acquire` refuses at once if it is held."""

    def __init__(self, device_dir: Path) -> None:
        self.device_dir = Path(device_dir)
        self.path = self.device_dir / JOIN_LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> JoinLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DeviceError(f"{self.device_dir}: another join (pid {holder}) is using this device folder; "
                              "stop it first") from None
        except OSError as error:
            os.close(fd)
            raise DeviceError(f"{self.path}: cannot lock the device folder: {error.strerror or error}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            os.close(fd)
            raise DeviceError(f"{self.path}: cannot write the join lock: {error.strerror or error}") from None
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the next reader
            os.close(fd)  # releases the flock

    def _open(self) -> int:
        try:
            self.device_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeviceError(f"{self.device_dir}: cannot create the device folder: {error.strerror or error}") \
                from None
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as error:
            raise DeviceError(f"{self.path}: cannot open the join lock: {error.strerror or error}") from None


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote ("unknown" if it wrote none in time)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text.isdigit() or time.monotonic() > deadline:
            return text if text.isdigit() else "unknown"
        time.sleep(0.02)


@contextlib.contextmanager
def participation(device_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold the join lock of every folder (all or none: a refusal releases the ones taken)."""
    with contextlib.ExitStack() as held:
        for folder in device_dirs:
            held.enter_context(JoinLock(folder))
        yield
