"""The device's durable state in one SQLite file: ratings, personal parameters, the active model.

Ratings are keyed by the app's raw item id, not by a model's dense index, because they outlive
models and vocabularies: a new model may renumber or drop items, and the ratings stay. Personal
parameters are stored with the model version and dimension they were fitted with, so an upgrade
can tell whether they still fit. Every mutation is one transaction in WAL mode, so a kill or
power cut at any moment leaves either the old or the new state; rows are validated before the
transaction starts, so a bad row writes nothing. Ratings and models commit with
synchronous=FULL (durable once stored); a fit of the personal parameters commits with NORMAL
(Android's default for WAL): still atomic and safe against a kill, but a power cut may take it
back to the previous fit. It is derived data, refitted from the ratings at the next
personalization, and its fsync was a sixth of a cold personalization (~0.4 ms of ~2.6).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

from edge_client.errors import EdgeError

DB_FILE = "device.db"
SCHEMA_VERSION = 2  # 2: the ranking head's implicit vector beside the rating head's parameters
_INT64 = (-(2**63), 2**63 - 1)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE ratings (
    item_id   INTEGER PRIMARY KEY,             -- the app's raw item id
    rating    REAL NOT NULL,
    rated_at  TEXT NOT NULL
);
CREATE TABLE user_params (
    id            INTEGER PRIMARY KEY CHECK (id = 1),  -- one user per device
    embedding     BLOB NOT NULL,                       -- float32 little-endian, dim values
    bias          REAL NOT NULL,
    dim           INTEGER NOT NULL CHECK (dim > 0),
    model_version TEXT NOT NULL,                       -- the model they were fitted with
    num_ratings   INTEGER NOT NULL CHECK (num_ratings >= 0),
    fitted_at     TEXT NOT NULL,
    implicit_embedding BLOB,                           -- float32 [dim], or NULL: fitted before schema 2
    CHECK (length(embedding) = 4 * dim),
    CHECK (implicit_embedding IS NULL OR length(implicit_embedding) = 4 * dim)
);
CREATE TABLE active_model (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    model_version TEXT NOT NULL,
    activated_at  TEXT NOT NULL
);
"""


class StoreError(EdgeError, ValueError):
    """A write refused (bad rows) or a store that cannot be used; nothing was written."""


def _sqlite_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Turn SQLite's failures (a full or read-only disk, a locked or damaged file) into a
    StoreError naming the file; a failed transaction has been rolled back, so nothing changed."""

    @functools.wraps(method)
    def guarded(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {_explain(error, self.path)}; nothing was changed") from None

    return guarded


def _explain(error: sqlite3.Error, path: Path) -> str:
    text = str(error)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    try:
        read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or "readonly" in text or "read-only" in text:
        return f"the device folder is on a read-only disk ({text})"
    if "disk is full" in text or (free is not None and free < 1 << 20):
        return f"the disk is full ({text})"
    if "disk I/O error" in text:
        return f"the disk failed ({text})"
    if "locked" in text or "busy" in text:
        return f"the device store is busy in another process ({text})"
    return f"the device store failed ({text})"


@dataclasses.dataclass(frozen=True)
class StoredUserParams:
    """This user's parameters as persisted, with where they came from."""

    embedding: np.ndarray  # float32 [dim], the rating head's
    bias: float
    model_version: str
    num_ratings: int
    fitted_at: str = ""
    implicit: np.ndarray | None = None  # float32 [dim], the ranking head's; None if never fitted

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[0])


@dataclasses.dataclass(frozen=True)
class RatingsWrite:
    added: int
    replaced: int


class Store:
    """One connection to `device.db`; use as a context manager or call `close()`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: cannot open the device store: {_explain(error, self.path)}") from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journaling (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._db.close()
            if isinstance(error, sqlite3.OperationalError):  # the disk, not the file
                raise StoreError(f"{self.path}: cannot open the device store: {_explain(error, self.path)}") from None
            raise StoreError(f"{self.path}: not a usable device store: {error}") from None
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # ratings

    @_sqlite_errors
    def put_ratings(self, rows: Iterable[tuple[int, float]]) -> RatingsWrite:
        """Insert or replace ratings, all in one transaction; any bad row refuses the whole batch."""
        checked: dict[int, float] = {}
        for index, (item_id, rating) in enumerate(rows):
            key = _check_item_id(item_id, f"row {index}")
            if key in checked:
                raise StoreError(f"row {index}: item {key} appears twice in one write")
            checked[key] = _check_finite(rating, f"row {index}: rating")
        now = _now()
        with self._transaction():
            existing = self._count_existing(list(checked))
            self._db.executemany(
                "INSERT INTO ratings (item_id, rating, rated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(item_id) DO UPDATE SET rating = excluded.rating, rated_at = excluded.rated_at",
                [(k, v, now) for k, v in checked.items()],
            )
        return RatingsWrite(added=len(checked) - existing, replaced=existing)

    @_sqlite_errors
    def ratings(self) -> dict[int, float]:
        """All stored ratings, raw item id -> rating, in item id order."""
        return dict(self._db.execute("SELECT item_id, rating FROM ratings ORDER BY item_id").fetchall())

    @_sqlite_errors
    def num_ratings(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM ratings").fetchone()[0])

    # personal parameters

    @_sqlite_errors
    def user_params(self) -> StoredUserParams | None:
        row = self._db.execute(
            "SELECT embedding, bias, dim, model_version, num_ratings, fitted_at, implicit_embedding "
            "FROM user_params WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        blob, bias, dim, version, count, fitted_at, implicit_blob = row
        embedding = _read_vector(blob, dim)
        implicit = None if implicit_blob is None else _read_vector(implicit_blob, dim)
        if embedding is None or (implicit_blob is not None and implicit is None):
            raise StoreError(f"{self.path}: the stored personal parameters are damaged")
        return StoredUserParams(embedding, float(bias), version, int(count), fitted_at, implicit)

    @_sqlite_errors
    def put_user_params(self, params: StoredUserParams) -> None:
        row = _user_row(params)
        self._db.execute("PRAGMA synchronous=NORMAL")  # derived data: see the module doc
        try:
            with self._transaction():
                self._write_user_row(row)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    # models

    @_sqlite_errors
    def active_model(self) -> str | None:
        row = self._db.execute("SELECT model_version FROM active_model WHERE id = 1").fetchone()
        return None if row is None else row[0]

    @_sqlite_errors
    def activate_model(
        self, model_version: str, *, user_params: StoredUserParams | None = None, drop_user_params: bool = False
    ) -> None:
        """Make `model_version` active and, in the same transaction, replace or drop the parameters."""
        if not isinstance(model_version, str) or not model_version:
            raise StoreError(f"model_version must be a non-empty string, got {model_version!r}")
        if user_params is not None and drop_user_params:
            raise StoreError("give new user parameters or drop them, not both")
        row = None if user_params is None else _user_row(user_params)
        with self._transaction():
            self._db.execute(
                "INSERT INTO active_model (id, model_version, activated_at) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET model_version = excluded.model_version, "
                "activated_at = excluded.activated_at",
                (model_version, _now()),
            )
            if row is not None:
                self._write_user_row(row)
            elif drop_user_params:
                self._db.execute("DELETE FROM user_params")

    @_sqlite_errors
    def integrity_check(self) -> str:
        """SQLite's own check: 'ok' for a sound file."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # internals

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolls back itself when a COMMIT fails for a full disk
            raise

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to date, in one transaction."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema {version} is newer than this client's {SCHEMA_VERSION}")
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            elif version == 1:  # ratings and parameters stay; the ranking vector is fitted at the next install
                self._db.execute("ALTER TABLE user_params ADD COLUMN implicit_embedding BLOB "
                                 "CHECK (implicit_embedding IS NULL OR length(implicit_embedding) = 4 * dim)")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _count_existing(self, item_ids: list[int]) -> int:
        total = 0
        for start in range(0, len(item_ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = item_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            total += self._db.execute(f"SELECT count(*) FROM ratings WHERE item_id IN ({marks})", chunk).fetchone()[0]
        return int(total)

    def _write_user_row(self, row: tuple[Any, ...]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO user_params (id, embedding, bias, dim, model_version, num_ratings, fitted_at, "
            "implicit_embedding) VALUES (1, ?, ?, ?, ?, ?, ?, ?)", row,
        )


def _user_row(params: StoredUserParams) -> tuple[Any, ...]:
    embedding = np.asarray(params.embedding)
    if embedding.ndim != 1 or embedding.size == 0:
        raise StoreError(f"the user embedding must be a non-empty vector, got shape {embedding.shape}")
    if not np.issubdtype(embedding.dtype, np.number) or not np.all(np.isfinite(embedding)):
        raise StoreError("the user embedding must hold finite numbers")
    bias = _check_finite(params.bias, "user bias")
    if not isinstance(params.model_version, str) or not params.model_version:
        raise StoreError("user parameters need the model_version they were fitted with")
    if isinstance(params.num_ratings, bool) or not isinstance(params.num_ratings, (int, np.integer)) \
            or params.num_ratings < 0:
        raise StoreError(f"num_ratings must be a non-negative integer, got {params.num_ratings!r}")
    blob = embedding.astype("<f4").tobytes()
    implicit_blob = None
    if params.implicit is not None:
        implicit = np.asarray(params.implicit)
        if implicit.shape != embedding.shape or not np.issubdtype(implicit.dtype, np.number) \
                or not np.all(np.isfinite(implicit)):
            raise StoreError(f"the implicit vector must be {embedding.size} finite numbers, got shape {implicit.shape}")
        implicit_blob = implicit.astype("<f4").tobytes()
    return (blob, bias, int(embedding.size), params.model_version, int(params.num_ratings),
            params.fitted_at or _now(), implicit_blob)


def _read_vector(blob: Any, dim: int) -> np.ndarray | None:
    """A stored float32 vector of `dim` finite values, or None if it is not one."""
    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
        return None
    vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return vector if np.all(np.isfinite(vector)) else None


def _check_item_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StoreError(f"{where}: item id {value!r} is not an integer")
    value = int(value)
    if not _INT64[0] <= value <= _INT64[1]:
        raise StoreError(f"{where}: item id {value} does not fit in 64 bits")
    return value


def _check_finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise StoreError(f"{where} {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise StoreError(f"{where} {value!r} is not finite")
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
