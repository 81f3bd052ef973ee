"""One writer per device: an advisory lock on the device folder, shared by readers.

Without it, three `fedrec-edge install` run at once could each remove the folders the others had
just placed (seen: 4 of 25 trials ended with the active model's folder gone, every install
reporting success). Writers (install, import, rate, personalize) take the lock exclusively,
readers (recommend, status, a round's update) share it. `flock` locks belong to the open file,
so a killed process releases its lock at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edge_client.errors import DeviceError

LOCK_FILE = ".lock"


class DeviceLock:
    """Re-entrant within one Device object: nested acquisitions of the held mode are free."""

    def __init__(self, device_dir: Path, *, timeout_seconds: float = 60.0) -> None:
        self.path = device_dir / LOCK_FILE
        self.timeout_seconds = timeout_seconds
        self._fd: int | None = None
        self._exclusive = False
        self._depth = 0

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._held(exclusive=True):
            yield

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._held(exclusive=False):
            yield

    @contextlib.contextmanager
    def _held(self, *, exclusive: bool) -> Iterator[None]:
        if self._depth:
            if exclusive and not self._exclusive:
                raise RuntimeError("cannot take the device lock exclusively while holding it shared")
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._acquire(exclusive)
        try:
            yield
        finally:
            self._release()

    def _acquire(self, exclusive: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as error:
            raise DeviceError(f"{self.path}: cannot open the device lock: {error.strerror or error}") from None
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise DeviceError(f"{self.path.parent}: another fedrec-edge command has been using this "
                                      f"device for over {self.timeout_seconds:g} s; try again when it ends") from None
                time.sleep(0.01)
            except OSError as error:
                os.close(fd)
                raise DeviceError(f"{self.path}: cannot lock the device: {error.strerror or error}") from None
        self._fd, self._exclusive, self._depth = fd, exclusive, 1

    def _release(self) -> None:
        fd, self._fd, self._depth = self._fd, None, 0
        if fd is not None:
            os.close(fd)  # releases the flock
