"""The coordinator's durable state: one SQLite database plus atomic checkpoint files.

    state_dir/
      coordinator.db        devices, rounds (every attempt), checkpoints index, packages, ε ledger
      checkpoints/          params-<version>.npz: global parameters + optimizer + DP state
      packages/<version>/   exported model packages devices download
      tls/                  CA and server certificate (coordinator.tls)

Why this order of writes makes `kill -9` harmless: a round's checkpoint file is written under
a temporary name and renamed (fsync'd) *before* the one transaction that marks the round
completed and indexes the file. A kill before that transaction leaves an unindexed file that
the next start ignores (the round is re-run); a kill after it leaves a completed round. The ε
ledger (`privacy_ledger`) is committed before a noised result is used, so a kill can only make
ε over-counted, never under-counted. SQLite runs in WAL mode with synchronous=FULL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.errors import StateError
from protocol.files import atomic_write

DB_FILE = "coordinator.db"
CHECKPOINTS_DIR = "checkpoints"
PACKAGES_DIR = "packages"
# Files a running coordinator writes for the tools around it (`fedrec status`, `fedrec up`, devices).
ADDRESS_FILE = "address"  # host:port it listens on
METRICS_ADDRESS_FILE = "metrics-address"
TOKEN_FILE = "enroll-token"
CATALOG_FILE = "catalog.json"  # the run's item catalog, fixed at its first start
TRAINING_CONFIG_META = "training_config"  # the training config of the run's first start (JSON)
_KEEP_CHECKPOINTS = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, label TEXT NOT NULL, certificate_sha256 TEXT NOT NULL, public_key BLOB NOT NULL,
    enrolled_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    attempt INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id BLOB NOT NULL UNIQUE,
    round_number INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'abandoned', 'interrupted')),
    started_at REAL NOT NULL,
    ended_at REAL,
    selected INTEGER NOT NULL,
    reporters INTEGER,
    dropouts INTEGER,
    reason TEXT,
    bytes_in INTEGER,
    bytes_out INTEGER
);
CREATE TABLE IF NOT EXISTS checkpoints (
    params_version INTEGER PRIMARY KEY,
    attempt INTEGER,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS packages (
    model_version TEXT PRIMARY KEY, params_version INTEGER NOT NULL, folder TEXT NOT NULL, created_at REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The server's training state after `params_version` completed rounds."""

    params_version: int
    arrays: dict[str, list[np.ndarray]]  # "params", "optimizer", "aggregator" -> arrays
    summary: dict[str, Any]  # small JSON facts about the round that produced it


@dataclasses.dataclass(frozen=True)
class EnrolledDevice:
    device_id: str
    label: str
    revoked: bool


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    attempt: int
    round_id: bytes
    round_number: int
    status: str
    started_at: float
    ended_at: float | None
    selected: int
    reporters: int | None
    dropouts: int | None
    reason: str | None
    bytes_in: int | None
    bytes_out: int | None


class StateStore:
    """Durable coordinator state in `state_dir` (created if missing)."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._active = "revoked_at IS NULL"  # which devices count (a state made before revocation has no column)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / CHECKPOINTS_DIR).mkdir(exist_ok=True)
            (self.state_dir / PACKAGES_DIR).mkdir(exist_ok=True)
        except OSError as error:
            raise StateError(f"{self.state_dir}: cannot create the state folder: {error}") from None
        path = self.state_dir / DB_FILE
        try:
            self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise StateError(f"{path}: not a usable coordinator database ({error})") from None
        self._interrupt_running_rounds()

    @classmethod
    def read_only(cls, state_dir: Path | str) -> StateStore:
        """The state as it is, opened without writing anything (`fedrec status` beside, or after, a
        coordinator): no folder or table is created, no migration runs, no round is marked."""
        store = cls.__new__(cls)
        store.state_dir = Path(state_dir)
        path = store.state_dir / DB_FILE
        if not path.is_file():
            raise StateError(f"{store.state_dir}: no coordinator state here (no {DB_FILE})")
        try:
            store.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            columns = {row[1] for row in store.connection.execute("PRAGMA table_info(devices)")}
        except sqlite3.DatabaseError as error:
            raise StateError(f"{path}: not a usable coordinator database ({error})") from None
        store._active = "revoked_at IS NULL" if "revoked_at" in columns else "1"
        return store

    def close(self) -> None:
        self.connection.close()

    def _migrate(self) -> None:
        """Columns added since the first release, added to a state folder made before them."""
        columns = {row[1] for row in self.connection.execute("PRAGMA table_info(devices)")}
        if "revoked_at" not in columns:
            self.connection.execute("ALTER TABLE devices ADD COLUMN revoked_at REAL")
        self.connection.execute("CREATE INDEX IF NOT EXISTS devices_by_key ON devices (public_key)")
        self.connection.execute("CREATE INDEX IF NOT EXISTS devices_by_label ON devices (label)")

    # meta

    def get_meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def claim_meta(self, key: str, value: str) -> str:
        """Store `value` under `key` unless a value is stored already; returns the stored one."""
        self.connection.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        stored = self.get_meta(key)
        assert stored is not None
        return stored

    # devices

    def add_device(self, device_id: str, *, label: str, certificate_sha256: str, public_key: bytes,
                   replaces: str | None = None) -> None:
        """Enroll a device; `replaces`: the active device of the same label, revoked in the same
        transaction (a device that lost its folder enrolls again as the same slot)."""
        with self._transaction():
            if replaces is not None:
                self.connection.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                                        (time.time(), replaces))
            self.connection.execute(
                "INSERT INTO devices (device_id, label, certificate_sha256, public_key, enrolled_at) "
                "VALUES (?, ?, ?, ?, ?)", (device_id, label, certificate_sha256, public_key, time.time()))

    def renew_certificate(self, device_id: str, certificate_sha256: str) -> None:
        self.connection.execute("UPDATE devices SET certificate_sha256 = ? WHERE device_id = ?",
                                (certificate_sha256, device_id))

    def device_with_key(self, public_key: bytes) -> EnrolledDevice | None:
        """The device (active or revoked) enrolled with this public key, if any."""
        row = self.connection.execute("SELECT device_id, label, revoked_at FROM devices WHERE public_key = ? "
                                      "ORDER BY enrolled_at LIMIT 1", (public_key,)).fetchone()
        return None if row is None else EnrolledDevice(row[0], row[1], row[2] is not None)

    def active_device_with_label(self, label: str) -> str | None:
        row = self.connection.execute("SELECT device_id FROM devices WHERE label = ? AND revoked_at IS NULL LIMIT 1",
                                      (label,)).fetchone()
        return None if row is None else str(row[0])

    def public_keys(self) -> dict[str, bytes]:
        """device id -> DER public key (what its signed messages are verified with), active devices."""
        return {device: bytes(key) for device, key in self.connection.execute(
            f"SELECT device_id, public_key FROM devices WHERE {self._active}").fetchall()}

    def devices(self) -> dict[str, str]:
        """device id -> label, of every active (enrolled, not replaced) device."""
        return dict(self.connection.execute(f"SELECT device_id, label FROM devices WHERE {self._active}").fetchall())

    def num_devices(self) -> int:
        """Active devices: what the enrollment bound counts."""
        return int(self.connection.execute(f"SELECT COUNT(*) FROM devices WHERE {self._active}").fetchone()[0])

    # rounds

    def start_round(self, *, round_id: bytes, round_number: int, selected: int) -> int:
        cursor = self.connection.execute(
            "INSERT INTO rounds (round_id, round_number, status, started_at, selected) VALUES (?, ?, 'running', ?, ?)",
            (round_id, round_number, time.time(), selected))
        assert cursor.lastrowid is not None  # an INSERT always sets it
        return cursor.lastrowid

    def abandon_round(self, attempt: int, *, reason: str, reporters: int, dropouts: int, bytes_in: int,
                      bytes_out: int) -> None:
        self.connection.execute(
            "UPDATE rounds SET status = 'abandoned', ended_at = ?, reason = ?, reporters = ?, dropouts = ?, "
            "bytes_in = ?, bytes_out = ? WHERE attempt = ? AND status = 'running'",
            (time.time(), reason, reporters, dropouts, bytes_in, bytes_out, attempt))

    def rounds(self) -> list[RoundRecord]:
        rows = self.connection.execute(
            "SELECT attempt, round_id, round_number, status, started_at, ended_at, selected, reporters, dropouts, "
            "reason, bytes_in, bytes_out FROM rounds ORDER BY attempt").fetchall()
        return [RoundRecord(*row) for row in rows]

    def round_counts(self) -> dict[str, int]:
        counts = dict(self.connection.execute("SELECT status, COUNT(*) FROM rounds GROUP BY status").fetchall())
        return {status: int(counts.get(status, 0)) for status in ("running", "completed", "abandoned", "interrupted")}

    def _interrupt_running_rounds(self) -> None:
        """Rounds a killed coordinator left 'running' ended with it: their results were never used."""
        self.connection.execute("UPDATE rounds SET status = 'interrupted', ended_at = ?, reason = "
                                "'the coordinator stopped during the round' WHERE status = 'running'", (time.time(),))

    # checkpoints

    def commit_round(self, attempt: int | None, checkpoint: Checkpoint, *, reporters: int, dropouts: int,
                     bytes_in: int, bytes_out: int) -> Path:
        """Write the checkpoint file, then in one transaction index it and mark the round completed."""
        name = f"params-{checkpoint.params_version:06d}.npz"
        path = self.state_dir / CHECKPOINTS_DIR / name
        payload = _encode_arrays(checkpoint.arrays)
        atomic_write(path, payload)
        digest = hashlib.sha256(payload).hexdigest()
        with self._transaction():
            self.connection.execute(
                "INSERT INTO checkpoints (params_version, attempt, file, sha256, created_at, summary) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (checkpoint.params_version, attempt, name, digest, time.time(),
                 json.dumps(checkpoint.summary, allow_nan=False)))
            if attempt is not None:
                self.connection.execute(
                    "UPDATE rounds SET status = 'completed', ended_at = ?, reporters = ?, dropouts = ?, bytes_in = ?, "
                    "bytes_out = ? WHERE attempt = ?", (time.time(), reporters, dropouts, bytes_in, bytes_out, attempt))
        self._remove_old_checkpoints(keep_from=checkpoint.params_version - _KEEP_CHECKPOINTS + 1)
        return path

    def latest_checkpoint(self) -> Checkpoint | None:
        row = self.connection.execute("SELECT params_version, file, sha256, summary FROM checkpoints "
                                      "ORDER BY params_version DESC LIMIT 1").fetchone()
        if row is None:
            return None
        version, name, digest, summary = row
        path = self.state_dir / CHECKPOINTS_DIR / name
        try:
            payload = path.read_bytes()
        except OSError as error:
            raise StateError(f"{path}: the checkpoint of params version {version} cannot be read ({error})") from None
        if hashlib.sha256(payload).hexdigest() != digest:
            raise StateError(f"{path}: the checkpoint of params version {version} does not match its recorded "
                             "sha256 (damaged after it was written)")
        return Checkpoint(version, _decode_arrays(payload, path), json.loads(summary))

    def checkpoint_summaries(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.connection.execute("SELECT params_version, summary FROM checkpoints ORDER BY params_version")
        return [(int(version), json.loads(summary)) for version, summary in rows.fetchall()]

    def _remove_old_checkpoints(self, *, keep_from: int) -> None:
        """Remove checkpoint files older than the last few (their index rows stay, for the history)."""
        rows = self.connection.execute("SELECT file FROM checkpoints WHERE params_version < ?", (keep_from,)).fetchall()
        for (name,) in rows:
            (self.state_dir / CHECKPOINTS_DIR / name).unlink(missing_ok=True)

    # packages

    def add_package(self, model_version: str, *, params_version: int, folder: Path) -> None:
        self.connection.execute("INSERT OR IGNORE INTO packages (model_version, params_version, folder, created_at) "
                                "VALUES (?, ?, ?, ?)", (model_version, params_version, str(folder), time.time()))

    def packages(self) -> list[tuple[str, int, Path]]:
        rows = self.connection.execute("SELECT model_version, params_version, folder FROM packages "
                                       "ORDER BY params_version, created_at").fetchall()
        return [(version, int(params), Path(folder)) for version, params, folder in rows]

    # internals

    def _transaction(self) -> _Transaction:
        return _Transaction(self.connection)


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.connection.execute("ROLLBACK" if kind is not None else "COMMIT")


def _encode_arrays(groups: dict[str, list[np.ndarray]]) -> bytes:
    flat = {f"{group}/{index:04d}": np.asarray(array) for group, arrays in groups.items()
            for index, array in enumerate(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    return buffer.getvalue()


def _decode_arrays(payload: bytes, path: Path) -> dict[str, list[np.ndarray]]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            groups: dict[str, list[tuple[int, np.ndarray]]] = {}
            for key in data.files:
                group, index = key.rsplit("/", 1)
                groups.setdefault(group, []).append((int(index), data[key]))
    except (ValueError, OSError, KeyError) as error:
        raise StateError(f"{path}: not a readable checkpoint ({error})") from None
    return {group: [array for _, array in sorted(items, key=lambda pair: pair[0])] for group, items in groups.items()}

