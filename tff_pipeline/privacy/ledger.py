"""The ε ledger: the DpEvent of every noised round, durable in SQLite, composed on demand.

Why a ledger rather than ε recomputed from the plan (z, q, T): ε must come from what was
actually applied (adaptive clipping's split of z, a config changed between runs, rounds re-run
after a crash). The coordinator records a round's event *before* it uses the noised result and
`record` commits before it returns, so a crash can over-count ε (a recorded round whose result
was lost), never under-count it.

A round is stored as `PoissonSampledDpEvent(q, event)` in the JSON of `events.py`: each device
takes part independently with probability q, and `event` is what the DP query returned. ε is
composed by `accounting.epsilon`, the function the simulation's report uses for the events its
aggregator applied, with the plan's accountants and settings: RDP, an upper bound, and PLD,
tighter.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import dp_accounting

from tff_pipeline.privacy import accounting
from tff_pipeline.privacy.accounting import Epsilon
from tff_pipeline.privacy.errors import LedgerError, PrivacyError
from tff_pipeline.privacy.events import decode_event, encode_event, sampled_round

__all__ = ["Epsilon", "LedgerEntry", "LedgerError", "PrivacyLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    round_num INTEGER PRIMARY KEY CHECK (round_num >= 0),
    event TEXT NOT NULL,
    recorded_at REAL NOT NULL
)
"""


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    round_num: int
    event: dp_accounting.DpEvent  # PoissonSampledDpEvent(sampling rate, the query's event)


class PrivacyLedger:
    """The ε ledger in `connection`'s database (its table is created if missing).

    `record` runs its own transaction and commits it, so it refuses to run inside a transaction
    the caller has open (it would commit the caller's half-done work with it).
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._refuse_open_transaction()
        connection.execute(_SCHEMA)
        if connection.in_transaction:  # a connection in Python's legacy transaction mode
            connection.commit()

    def record(self, round_num: int, event: dp_accounting.DpEvent, sampling_rate: float) -> None:
        """Store round `round_num`'s event, sampled at `sampling_rate`, and commit. Recording a
        round again with the same event does nothing; with another event raises LedgerError."""
        if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 0:
            raise PrivacyError(f"round_num must be an integer >= 0, got {round_num!r}")
        text = encode_event(sampled_round(event, sampling_rate))
        self._refuse_open_transaction()
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")  # holds the write lock from the read to the insert
        try:
            row = connection.execute("SELECT event FROM privacy_ledger WHERE round_num = ?", (round_num,)).fetchone()
            if row is None:
                connection.execute("INSERT INTO privacy_ledger (round_num, event, recorded_at) VALUES (?, ?, ?)",
                                   (round_num, text, time.time()))
            elif row[0] != text:
                raise LedgerError(f"round {round_num} is already recorded with another event: {row[0]} (now {text})")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def events(self) -> list[LedgerEntry]:
        """Every recorded round, in round order."""
        rows = self._connection.execute("SELECT round_num, event FROM privacy_ledger ORDER BY round_num").fetchall()
        entries = []
        for round_num, text in rows:
            try:
                entries.append(LedgerEntry(int(round_num), decode_event(text)))
            except ValueError as error:
                raise LedgerError(f"privacy ledger round {round_num}: unreadable event ({error})") from None
        return entries

    def epsilon(self, delta: float) -> Epsilon:
        """(ε by RDP, ε by PLD) at `delta` of all recorded rounds composed (`accounting.epsilon`)."""
        _check_delta(delta)
        return self._epsilon([entry.event for entry in self.events()], delta, with_pld=True)

    def would_exceed(
        self, event: dp_accounting.DpEvent, sampling_rate: float, *, target_epsilon: float, delta: float
    ) -> bool:
        """Whether one more round with `event` would take the RDP ε past `target_epsilon`. RDP, as
        the plan's noise calibration (`accounting.calibrate_noise_multiplier`): it upper-bounds
        PLD, so a run that stays within it is within budget by both."""
        if not target_epsilon > 0:
            raise PrivacyError(f"target_epsilon must be > 0, got {target_epsilon}")
        _check_delta(delta)
        candidate = sampled_round(event, sampling_rate)  # the same validation as `record`
        events = [entry.event for entry in self.events()] + [candidate]
        return self._epsilon(events, delta, with_pld=False).rdp > target_epsilon

    @staticmethod
    def _epsilon(events: list[dp_accounting.DpEvent], delta: float, *, with_pld: bool) -> Epsilon:
        try:
            return accounting.epsilon(events, delta, with_pld=with_pld)
        except ValueError as error:  # an event the accountants cannot compose
            raise LedgerError(f"privacy ledger: {error}") from None

    def _refuse_open_transaction(self) -> None:
        if self._connection.in_transaction:
            raise LedgerError("the privacy ledger commits its own transaction: call it outside the caller's")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
