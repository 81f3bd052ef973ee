"""What a coordinator's state folder says, read without the coordinator (and without writing).

`fedrec status` shows it when no coordinator holds the folder: a stopped deployment still has
rounds, an ε spent and enrolled devices, and the user wants them (and to be told it is not
running). The database is opened read-only; nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from coordinator.errors import StateError
from coordinator.privacy_ledger import LedgerError, PrivacyLedger
from coordinator.state_store import DB_FILE, TRAINING_CONFIG_META, StateStore


@dataclasses.dataclass(frozen=True)
class DurableStatus:
    rounds_completed: int
    rounds_planned: int | None
    rounds_abandoned: int  # abandoned or interrupted attempts
    devices_enrolled: int
    epsilon: float | None  # None: not a DP run
    delta: float | None
    model_version: str | None

    def lines(self) -> list[str]:
        planned = "?" if self.rounds_planned is None else str(self.rounds_planned)
        spent = "no DP" if self.epsilon is None else f"ε {self.epsilon:.3f} spent at δ {self.delta:g}"
        return [f"rounds {self.rounds_completed}/{planned} completed, {self.rounds_abandoned} abandoned  "
                f"devices {self.devices_enrolled}  {spent}",
                f"model {self.model_version or 'none published'}"]


def read_durable_status(state_dir: Path) -> DurableStatus:
    store = StateStore.read_only(state_dir)
    try:
        return _read(store)
    except (sqlite3.DatabaseError, LedgerError, ValueError, KeyError, TypeError) as error:
        raise StateError(f"{state_dir / DB_FILE}: not a readable coordinator database ({error})") from None
    finally:
        store.close()


def _read(store: StateStore) -> DurableStatus:
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
    return DurableStatus(rounds_completed=summaries[-1][0] if summaries else 0, rounds_planned=setting.get("rounds"),
                         rounds_abandoned=abandoned, devices_enrolled=store.num_devices(), epsilon=epsilon,
                         delta=delta, model_version=packages[-1][0] if packages else None)
