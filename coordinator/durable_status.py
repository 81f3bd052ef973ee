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
from coordinator.state_store import DB_FILE, TRAINING_CONFIG_META


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
    path = Path(state_dir) / DB_FILE
    if not path.is_file():
        raise StateError(f"{state_dir}: no coordinator state here (no {DB_FILE})")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise StateError(f"{path}: cannot open the coordinator database ({error})") from None
    try:
        return _read(connection)
    except (sqlite3.DatabaseError, LedgerError, ValueError, KeyError, TypeError) as error:
        raise StateError(f"{path}: not a readable coordinator database ({error})") from None
    finally:
        connection.close()


def _read(connection: sqlite3.Connection) -> DurableStatus:
    completed = connection.execute("SELECT COALESCE(MAX(params_version), 0) FROM checkpoints").fetchone()[0]
    abandoned = connection.execute("SELECT COUNT(*) FROM rounds WHERE status IN ('abandoned', 'interrupted', "
                                   "'running')").fetchone()[0]
    columns = {row[1] for row in connection.execute("PRAGMA table_info(devices)")}
    active = " WHERE revoked_at IS NULL" if "revoked_at" in columns else ""
    devices = connection.execute(f"SELECT COUNT(*) FROM devices{active}").fetchone()[0]
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    setting = json.loads(meta["privacy_setting"]) if "privacy_setting" in meta else {}
    training = json.loads(meta[TRAINING_CONFIG_META]) if TRAINING_CONFIG_META in meta else {}
    package = connection.execute("SELECT model_version FROM packages ORDER BY params_version DESC, created_at DESC "
                                 "LIMIT 1").fetchone()
    epsilon = delta = None
    if training.get("dp", "none") != "none":
        delta = float(training["delta"])
        ledger = PrivacyLedger(connection)
        epsilon = float(ledger.epsilon(delta).rdp) if ledger.events() else 0.0
    return DurableStatus(rounds_completed=int(completed), rounds_planned=setting.get("rounds"),
                         rounds_abandoned=int(abandoned), devices_enrolled=int(devices), epsilon=epsilon,
                         delta=delta, model_version=None if package is None else str(package[0]))
