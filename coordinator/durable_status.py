"""What a coordinator's state folder says, read without the coordinator (and without writing).

`fedrec status` shows it when no coordinator holds the folder: a stopped deployment still has
rounds, an ε spent and enrolled devices, and the user wants them (and to be told it is not
running). The database is opened read-only; nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from coordinator.errors import StateError
from coordinator.state_store import DB_FILE, TRAINING_CONFIG_META, StateStore
from coordinator.status import CoordinatorStatus
from tff_pipeline.privacy.ledger import LedgerError, PrivacyLedger


def read_durable_status(state_dir: Path) -> CoordinatorStatus:
    store = StateStore.read_only(state_dir)
    try:
        return _read(store)
    except (sqlite3.DatabaseError, LedgerError, ValueError, KeyError, TypeError) as error:
        raise StateError(f"{state_dir / DB_FILE}: not a readable coordinator database ({error})") from None
    finally:
        store.close()


def _read(store: StateStore) -> CoordinatorStatus:
    summaries = store.checkpoint_summaries()
    counts = store.round_counts()
    setting = json.loads(store.get_meta("privacy_setting") or "{}")
    training = json.loads(store.get_meta(TRAINING_CONFIG_META) or "{}")
    packages = store.packages()
    epsilon = delta = None
    if training.get("dp", "none") != "none":
        delta = float(training["delta"])
        ledger = PrivacyLedger(store.connection)
        epsilon = float(ledger.epsilon(delta).rdp) if ledger.events() else 0.0
    # Read offline, a round still marked running ended with its coordinator: it counts as abandoned.
    abandoned = counts["abandoned"] + counts["interrupted"] + counts["running"]
    completed = summaries[-1][0] if summaries else 0
    return CoordinatorStatus(rounds_completed=completed, rounds_planned=setting.get("rounds"),
                             rounds_abandoned=abandoned, round_counts=counts, devices_enrolled=store.num_devices(),
                             epsilon=epsilon, delta=delta, model_version=packages[-1][0] if packages else None,
                             params_version=completed)
