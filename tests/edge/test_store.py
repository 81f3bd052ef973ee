"""The SQLite store: durable settings, validation before writing, and atomicity under SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edge_client.store import Store, StoredUserParams, StoreError


def test_the_store_uses_wal_and_full_sync_and_survives_reopening(tmp_path):
    with Store(tmp_path / "device.db") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        store.put_ratings([(5, 4.0), (3, 1.0)])
        store.put_user_params(StoredUserParams(np.array([0.5, -1.0], np.float32), 0.25, "v1", 2))
        store.activate_model("v1")
    with Store(tmp_path / "device.db") as store:
        assert store.ratings() == {3: 1.0, 5: 4.0}
        params = store.user_params()
        np.testing.assert_array_equal(params.embedding, [0.5, -1.0])
        assert (params.bias, params.dim, params.model_version, params.num_ratings) == (0.25, 2, "v1", 2)
        assert params.fitted_at
        assert store.active_model() == "v1"
        assert store.integrity_check() == "ok"


def test_only_a_fit_commits_without_fsync_and_full_sync_comes_back_even_after_a_failure(tmp_path):
    """A fit is derived data (NORMAL: atomic, kill-safe, a power cut may undo it); ratings stay FULL."""
    with Store(tmp_path / "device.db") as store:
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        store.put_ratings([(5, 4.0)])
        assert not any("synchronous" in s for s in statements)
        statements.clear()
        store.put_user_params(StoredUserParams(np.array([0.5, -1.0], np.float32), 0.25, "v1", 1))
        synced = [s for s in statements if "synchronous" in s or s in ("BEGIN IMMEDIATE", "COMMIT")]
        assert synced == ["PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE", "COMMIT", "PRAGMA synchronous=FULL"]
        store._db.set_trace_callback(None)
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON user_params BEGIN SELECT RAISE(ABORT, 'no'); END")
        with pytest.raises(StoreError):
            store.put_user_params(StoredUserParams(np.array([1.0, 1.0], np.float32), 0.0, "v1", 1))
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        np.testing.assert_array_equal(store.user_params().embedding, [0.5, -1.0])


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    with Store(tmp_path / "device.db") as store:
        store.put_ratings([(1, 3.0)])
        for rows, message in [
            ([(2, 4.0), (3, float("nan"))], r"row 1: rating nan is not finite"),
            ([(2, 4.0), (True, 4.0)], r"row 1: item id True is not an integer"),
            ([(2, 4.0), ("7", 4.0)], r"row 1: item id '7' is not an integer"),
            ([(2, 4.0), (2, 5.0)], r"row 1: item 2 appears twice"),
            ([(2, 4.0), (2**70, 5.0)], r"does not fit in 64 bits"),
            ([(2, "4")], r"row 0: rating '4' is not a number"),
        ]:
            with pytest.raises(StoreError, match=message):
                store.put_ratings(rows)
        assert store.ratings() == {1: 3.0}
        for params, message in [
            (StoredUserParams(np.array([np.inf], np.float32), 0.0, "v1", 1), "finite"),
            (StoredUserParams(np.zeros((2, 2), np.float32), 0.0, "v1", 1), "non-empty vector"),
            (StoredUserParams(np.zeros(2, np.float32), float("nan"), "v1", 1), "user bias"),
            (StoredUserParams(np.zeros(2, np.float32), 0.0, "", 1), "model_version"),
            (StoredUserParams(np.zeros(2, np.float32), 0.0, "v1", -1), "num_ratings"),
        ]:
            with pytest.raises(StoreError, match=message):
                store.put_user_params(params)
        assert store.user_params() is None


def test_switching_the_model_and_the_parameters_is_one_transaction(tmp_path):
    with Store(tmp_path / "device.db") as store:
        store.activate_model("v1")
        store.put_user_params(StoredUserParams(np.zeros(2, np.float32), 0.0, "v1", 1))
        with pytest.raises(StoreError, match="finite"):  # refused params: the model does not switch either
            store.activate_model("v2", user_params=StoredUserParams(np.array([np.nan], np.float32), 0.0, "v2", 1))
        assert store.active_model() == "v1" and store.user_params().model_version == "v1"
        store.activate_model("v2", user_params=StoredUserParams(np.ones(3, np.float32), 1.0, "v2", 4))
        assert store.active_model() == "v2" and store.user_params().dim == 3
        store.activate_model("v3", drop_user_params=True)
        assert store.active_model() == "v3" and store.user_params() is None


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "device.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable device store"):
        Store(path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="store schema 99 is newer than this client's"):
        Store(other)


SCHEMA_1 = """
CREATE TABLE ratings (item_id INTEGER PRIMARY KEY, rating REAL NOT NULL, rated_at TEXT NOT NULL);
CREATE TABLE user_params (id INTEGER PRIMARY KEY CHECK (id = 1), embedding BLOB NOT NULL, bias REAL NOT NULL,
    dim INTEGER NOT NULL CHECK (dim > 0), model_version TEXT NOT NULL, num_ratings INTEGER NOT NULL,
    fitted_at TEXT NOT NULL, CHECK (length(embedding) = 4 * dim));
CREATE TABLE active_model (id INTEGER PRIMARY KEY CHECK (id = 1), model_version TEXT NOT NULL,
    activated_at TEXT NOT NULL);
INSERT INTO ratings VALUES (7, 4.0, 'then'), (9, 2.5, 'then');
INSERT INTO user_params VALUES (1, X'0000803F00000040', 0.5, 2, 'old-model', 2, 'then');
INSERT INTO active_model VALUES (1, 'old-model', 'then');
PRAGMA user_version = 1;
"""


def test_a_schema_1_store_is_migrated_keeping_ratings_and_parameters(tmp_path):
    """Devices from before the ranking head keep everything; the ranking vector is simply absent."""
    path = tmp_path / "device.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    with Store(path) as store:
        assert store.ratings() == {7: 4.0, 9: 2.5} and store.active_model() == "old-model"
        params = store.user_params()
        np.testing.assert_array_equal(params.embedding, [1.0, 2.0])
        assert params.bias == 0.5 and params.implicit is None
        store.put_user_params(StoredUserParams(params.embedding, 0.5, "new", 2, implicit=np.array([3.0, 4.0])))
    with Store(path) as reopened:
        np.testing.assert_array_equal(reopened.user_params().implicit, [3.0, 4.0])
        with pytest.raises(StoreError, match="implicit vector must be 2 finite numbers"):
            reopened.put_user_params(StoredUserParams(params.embedding, 0.5, "new", 2, implicit=np.ones(3)))


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from edge_client.store import StoredUserParams, Store

    store = Store(sys.argv[1])
    batch = 0
    while True:
        # ten new items per transaction, then parameters that claim the count so far
        store.put_ratings([(batch * 10 + k, float(1 + (batch + k) % 5)) for k in range(10)])
        store.put_user_params(StoredUserParams(np.full(64, batch, np.float32), float(batch), f"v{batch}",
                                               (batch + 1) * 10))
        print(batch, flush=True)
        batch += 1
""")


@pytest.mark.parametrize(("after_batches", "delay"), [(3, 0.0), (40, 0.007)])
def test_a_kill_while_writing_leaves_a_consistent_store(after_batches, delay, tmp_path):
    """The writer is SIGKILLed at an arbitrary point of its endless loop of transactions."""
    path = tmp_path / "device.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        acknowledged = -1
        deadline = time.monotonic() + 60
        while acknowledged < after_batches and time.monotonic() < deadline:
            line = writer.stdout.readline()
            assert line, "the writer stopped on its own"
            acknowledged = int(line)
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert acknowledged >= after_batches
    with Store(path) as store:
        assert store.integrity_check() == "ok"
        ratings = store.ratings()
        assert len(ratings) % 10 == 0, "a transaction was torn"
        assert len(ratings) >= (acknowledged + 1) * 10, "an acknowledged write was lost"
        assert sorted(ratings) == list(range(len(ratings)))
        params = store.user_params()
        batch = int(params.bias)
        np.testing.assert_array_equal(params.embedding, np.full(64, batch, np.float32))
        assert params.model_version == f"v{batch}" and params.num_ratings == (batch + 1) * 10 <= len(ratings)
        store.put_ratings([(10**6, 3.0)])  # and it is writable again
