"""One coordinator per state folder: an exclusive `flock` on `state_dir/coordinator.lock`.

Two coordinators on one folder would be two writers of one ε ledger and two views of which
devices are enrolled (seen: status calls alternating between them, devices enrolled through
one refused by the other). The Kubernetes Lease only covers the cluster; this covers every
machine. The lock belongs to the open file, so a killed coordinator releases it at once (no
stale lock to clean up after `kill -9`), and the descriptor is close-on-exec, so a child such
as TFF's worker never inherits it. The holder writes who it is into the file, so that a refused
second instance (and `fedrec status`) can name it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from coordinator.errors import StateError, StateFolderBusy

LOCK_FILE = "coordinator.lock"
_MAX_HOLDER_BYTES = 4096
_PROBE_GRACE_S = 1.0


class StateLock:
    """Held from `acquire` until `release` (or the process ends)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "StateLock":
        """Take the folder (created if missing) or raise `StateFolderBusy` naming the holder."""
        if self._fd is not None:
            return self
        fd = _open_lock_file(self.state_dir, self.path)
        deadline = time.monotonic() + _PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)  # a `fedrec status` probe holds it for an instant; a coordinator stays
                    continue
                holder = _read_holder(fd)
                os.close(fd)
                raise StateFolderBusy(f"{self.state_dir}: in use by another coordinator ({describe_holder(holder)}); "
                                      "stop it first, or give this one its own state folder") from None
            except OSError as error:
                os.close(fd)
                raise StateError(f"{self.path}: cannot lock the state folder: {error.strerror or error}") from None
        try:
            _write_holder(fd)
        except OSError as error:
            os.close(fd)
            raise StateError(f"{self.path}: cannot write the lock file: {error.strerror or error}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def refuse_if_held(state_dir: Path | str) -> None:
    """Raise `StateFolderBusy` if a coordinator holds `state_dir`, creating nothing (the check a
    starting coordinator makes before any other, so that this is the refusal it reports)."""
    info = holder(state_dir)
    if info is not None:
        raise StateFolderBusy(f"{state_dir}: in use by another coordinator ({describe_holder(info)}); "
                              "stop it first, or give this one its own state folder")


def holder(state_dir: Path | str) -> dict[str, object] | None:
    """Who holds `state_dir` now (pid, host, since), or None if no coordinator runs on it.

    Probes with a shared lock that is released at once, so it never blocks a coordinator."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise StateError(f"{path}: cannot read the lock file: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
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


def _open_lock_file(state_dir: Path, path: Path) -> int:
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"{state_dir}: the state folder is a file, not a folder")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StateError(f"{state_dir}: cannot create the state folder's lock: {error.strerror or error}") from None


def _write_holder(fd: int) -> None:
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text + b"\n", 0)
    os.fsync(fd)


def _read_holder(fd: int) -> dict[str, object] | None:
    try:
        text = os.pread(fd, _MAX_HOLDER_BYTES, 0)
        info = json.loads(text.decode("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
