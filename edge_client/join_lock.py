"""One participation per device folder: `join` and the fleet hold `.join.lock` while they take part.

Two processes taking part in rounds as one device would sign with one key, race on its identity
files and check in twice. The device lock (`.lock`, device_lock.py) cannot serve: a command holds
it only while it runs, and install, rate or recommend must keep working while a join runs. So
taking part has its own lock file, held exclusively (flock) for the whole of a join's or a
fleet's life, naming its holder so that a refusal can say who it is (`protocol.holder_lock`, the
same lock a coordinator holds on its state folder; a killed holder releases it at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from edge_client.errors import DeviceError
from protocol.holder_lock import HeldElsewhere, HolderLock, describe_holder

JOIN_LOCK_FILE = ".join.lock"


class JoinLock:
    """The participation lock of one device folder; `acquire` refuses at once if it is held."""

    def __init__(self, device_dir: Path) -> None:
        self.device_dir = Path(device_dir)
        self.path = self.device_dir / JOIN_LOCK_FILE
        self._lock = HolderLock(self.path)

    def __enter__(self) -> JoinLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.device_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeviceError(f"{self.device_dir}: cannot create the device folder: {error.strerror or error}") \
                from None
        try:
            self._lock.acquire()
        except HeldElsewhere as busy:
            raise DeviceError(f"{self.device_dir}: another join ({describe_holder(busy.holder)}) is using this "
                              "device folder; stop it first") from None
        except OSError as error:
            raise DeviceError(f"{self.path}: cannot lock the device folder: {error.strerror or error}") from None

    def release(self) -> None:
        self._lock.release()


@contextlib.contextmanager
def participation(device_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold the join lock of every folder (all or none: a refusal releases the ones taken)."""
    with contextlib.ExitStack() as held:
        for folder in device_dirs:
            held.enter_context(JoinLock(folder))
        yield
