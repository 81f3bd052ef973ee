"""One coordinator per state folder: an exclusive lock on `state_dir/coordinator.lock`.

Two coordinators on one folder would be two writers of one ε ledger and two views of which
devices are enrolled (seen: status calls alternating between them, devices enrolled through
one refused by the other). The Kubernetes Lease only covers the cluster; this covers every
machine. The lock (`protocol.holder_lock`) is released by the kernel when its process dies and
names its holder, so that a refused second instance and `fedrec status` can say who it is.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import StateError, StateFolderBusy
from protocol.holder_lock import HeldElsewhere, HolderLock, describe_holder, read_holder

LOCK_FILE = "coordinator.lock"
__all__ = ["LOCK_FILE", "StateLock", "describe_holder", "holder", "refuse_if_held"]


class StateLock:
    """Held from `acquire` until `release` (or the process ends)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._lock = HolderLock(self.state_dir / LOCK_FILE)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> StateLock:
        """Take the folder (created if missing) or raise `StateFolderBusy` naming the holder."""
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise StateError(f"{self.state_dir}: the state folder is a file, not a folder")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except HeldElsewhere as busy:
            raise _busy(self.state_dir, busy.holder) from None
        except OSError as error:
            raise StateError(f"{self._lock.path}: cannot lock the state folder: {error.strerror or error}") from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(state_dir: Path | str) -> dict[str, object] | None:
    """Who holds `state_dir` now (pid, host, since), or None if no coordinator runs on it."""
    try:
        return read_holder(Path(state_dir) / LOCK_FILE)
    except OSError as error:
        raise StateError(f"{state_dir}: cannot read the lock file: {error.strerror or error}") from None


def refuse_if_held(state_dir: Path | str) -> None:
    """Raise `StateFolderBusy` if a coordinator holds `state_dir`, creating nothing (the check a
    starting coordinator makes before any other, so that this is the refusal it reports)."""
    info = holder(state_dir)
    if info is not None:
        raise _busy(Path(state_dir), info)


def _busy(state_dir: Path, info: dict[str, object] | None) -> StateFolderBusy:
    return StateFolderBusy(f"{state_dir}: in use by another coordinator ({describe_holder(info)}); stop it first, "
                           "or give this one its own state folder")
