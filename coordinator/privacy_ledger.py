"""The ε ledger: the DpEvent of every noised round, durable in SQLite, composed on demand.

Why a ledger rather than ε recomputed from the plan (z, q, T): ε must come from what was
actually applied (adaptive clipping's split of z, a config changed between runs, rounds re-run
after a crash). The coordinator records a round's event *before* it uses the noised result and
`record` commits before it returns, so a crash can over-count ε (a recorded round whose result
was lost), never under-count it.

A round is stored as `PoissonSampledDpEvent(q, event)`: each device takes part independently
with probability q, and `event` is what the DP query returned (`GaussianDpEvent(z)` with fixed
clipping; a `ComposedDpEvent` of the update's and the clipped count's Gaussians with adaptive
clipping). Events are stored as JSON written here for the event types that occur; any other type
is refused rather than stored in a form the accountants might misread. ε is composed with the
same accountants and settings as the plan (`tff_pipeline.privacy.accounting`): RDP, an upper
bound, and PLD, tighter.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import sqlite3
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import dp_accounting
from dp_accounting import pld, rdp

from tff_pipeline.privacy import accounting

# One discretisation for the plan's ε and the ledger's (the accounting module keeps it private).
_PLD_DISCRETIZATION = accounting._PLD_DISCRETIZATION

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    round_num INTEGER PRIMARY KEY CHECK (round_num >= 0),
    event TEXT NOT NULL,
    recorded_at REAL NOT NULL
)
"""


class LedgerError(RuntimeError):
    """The ledger refuses a record (another event for the round) or holds an unreadable entry."""


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    round_num: int
    event: dp_accounting.DpEvent  # PoissonSampledDpEvent(sampling rate, the query's event)


class Epsilon(NamedTuple):
    rdp: float
    pld: float


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
            raise ValueError(f"round_num must be an integer >= 0, got {round_num!r}")
        text = encode_event(dp_accounting.PoissonSampledDpEvent(sampling_rate, event))
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
        """(ε by RDP, ε by PLD) at `delta` of all recorded rounds composed."""
        _check_delta(delta)
        events = [entry.event for entry in self.events()]
        return Epsilon(_epsilon_rdp(events, delta), _epsilon_pld(events, delta))

    def would_exceed(
        self, event: dp_accounting.DpEvent, sampling_rate: float, *, target_epsilon: float, delta: float
    ) -> bool:
        """Whether one more round with `event` would take the RDP ε past `target_epsilon`. RDP, as
        the plan's noise calibration (`accounting.calibrate_noise_multiplier`): it upper-bounds
        PLD, so a run that stays within it is within budget by both."""
        if not target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
        _check_delta(delta)
        candidate = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
        decode_event(encode_event(candidate))  # the same validation as `record`
        events = [entry.event for entry in self.events()] + [candidate]
        return _epsilon_rdp(events, delta) > target_epsilon

    def _refuse_open_transaction(self) -> None:
        if self._connection.in_transaction:
            raise LedgerError("the privacy ledger commits its own transaction: call it outside the caller's")


# ---------------------------------------------------------------------------------------------
# serialisation
# ---------------------------------------------------------------------------------------------


def encode_event(event: dp_accounting.DpEvent) -> str:
    """Canonical JSON of an event built of Gaussian, Composed, PoissonSampled, SelfComposed and
    NoOp events (ValueError for any other type or an out-of-range value)."""
    return json.dumps(_to_json(event), sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_event(text: str) -> dp_accounting.DpEvent:
    """The event `encode_event` wrote (ValueError for anything else)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    return _from_json(obj)


def _to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
    kind = type(event)
    if kind is dp_accounting.NoOpDpEvent:
        return {"type": "NoOp"}
    if kind is dp_accounting.GaussianDpEvent:
        return {"type": "Gaussian", "noise_multiplier": _non_negative(event.noise_multiplier, "noise_multiplier")}
    if kind is dp_accounting.PoissonSampledDpEvent:
        return {"type": "PoissonSampled", "sampling_probability": _probability(event.sampling_probability),
                "event": _to_json(event.event)}
    if kind is dp_accounting.ComposedDpEvent:
        return {"type": "Composed", "events": [_to_json(e) for e in event.events]}
    if kind is dp_accounting.SelfComposedDpEvent:
        return {"type": "SelfComposed", "count": _count(event.count), "event": _to_json(event.event)}
    raise ValueError(f"the privacy ledger does not store {kind.__name__} events")


def _from_json(obj: Any) -> dp_accounting.DpEvent:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError(f"not an event: {obj!r}")
    fields = {
        "NoOp": set(), "Gaussian": {"noise_multiplier"}, "PoissonSampled": {"sampling_probability", "event"},
        "Composed": {"events"}, "SelfComposed": {"count", "event"},
    }.get(obj["type"])
    if fields is None or set(obj) != fields | {"type"}:
        raise ValueError(f"not an event of a stored type: {obj!r}")
    kind = obj["type"]
    if kind == "NoOp":
        return dp_accounting.NoOpDpEvent()
    if kind == "Gaussian":
        return dp_accounting.GaussianDpEvent(_non_negative(obj["noise_multiplier"], "noise_multiplier"))
    if kind == "PoissonSampled":
        return dp_accounting.PoissonSampledDpEvent(_probability(obj["sampling_probability"]), _from_json(obj["event"]))
    if kind == "Composed":
        if not isinstance(obj["events"], list):
            raise ValueError(f"composed events must be a list: {obj!r}")
        return dp_accounting.ComposedDpEvent([_from_json(e) for e in obj["events"]])
    return dp_accounting.SelfComposedDpEvent(_from_json(obj["event"]), _count(obj["count"]))


def _number(value: Any, name: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # also a 0-d tensor or numpy scalar
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _non_negative(value: Any, name: str) -> float:
    number = _number(value, name)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def _probability(value: Any) -> float:
    number = _number(value, "sampling probability")
    if not 0 <= number <= 1:
        raise ValueError(f"a sampling probability must be in [0, 1], got {number}")
    return number


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"a composition count must be an integer >= 0, got {value!r}")
    return value


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


# ---------------------------------------------------------------------------------------------
# accounting
# ---------------------------------------------------------------------------------------------


def _grouped(events: Iterable[dp_accounting.DpEvent]) -> list[dp_accounting.DpEvent]:
    """Equal events folded into `SelfComposedDpEvent`s (composition commutes). PLD composes a
    repeated event by one self-composition instead of one convolution per round, and T rounds of
    one event give exactly `accounting.training_event`."""
    counts = collections.Counter(encode_event(_single_gaussian(event)) for event in events)
    return [dp_accounting.SelfComposedDpEvent(decode_event(text), count) for text, count in counts.items()]


def _single_gaussian(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """A Poisson-sampled composition of Gaussians as the one Gaussian it equals.

    Gaussian queries on the same sample compose exactly into one Gaussian of noise multiplier
    (sum z_i^-2)^-1/2 (Mironov et al. 2019, arXiv:1812.06210, section 3; RDP's accountant does the
    same reduction). PLD only composes a PoissonSampled Gaussian, so an adaptive-clipping round
    (update and clipped count) needs this form; TFF splits z so that it gives back z.
    """
    if type(event) is not dp_accounting.PoissonSampledDpEvent:
        return event
    inverse_square = _inverse_square_sum(event.event)
    if inverse_square is None:
        return event  # not Gaussians only: left to the accountants to accept or refuse
    if inverse_square == 0:
        return dp_accounting.NoOpDpEvent()  # no noised release at all
    noise_multiplier = 0.0 if math.isinf(inverse_square) else inverse_square**-0.5
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.PoissonSampledDpEvent(event.sampling_probability, gaussian)


def _inverse_square_sum(event: dp_accounting.DpEvent) -> float | None:
    """sum z^-2 over the Gaussians of a nest of them (inf for a noiseless one); None otherwise."""
    kind = type(event)
    if kind is dp_accounting.NoOpDpEvent:
        return 0.0
    if kind is dp_accounting.GaussianDpEvent:
        return math.inf if event.noise_multiplier == 0 else event.noise_multiplier**-2
    if kind is dp_accounting.ComposedDpEvent:
        parts = [_inverse_square_sum(e) for e in event.events]
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]
    if kind is dp_accounting.SelfComposedDpEvent:
        part = _inverse_square_sum(event.event)
        return None if part is None else (0.0 if event.count == 0 else event.count * part)
    return None


def _compose(accountant: dp_accounting.PrivacyAccountant, events: list[dp_accounting.DpEvent]) -> None:
    for event in _grouped(events):
        if not accountant.supports(event):
            raise LedgerError(f"{type(accountant).__name__} cannot compose {event}")
        accountant.compose(event)


def _epsilon_rdp(events: list[dp_accounting.DpEvent], delta: float) -> float:
    if not events:
        return 0.0
    accountant = rdp.RdpAccountant()
    _compose(accountant, events)
    return float(accountant.get_epsilon(delta))


def _epsilon_pld(events: list[dp_accounting.DpEvent], delta: float) -> float:
    if not events:
        return 0.0
    accountant = pld.PLDAccountant(value_discretization_interval=_PLD_DISCRETIZATION)
    _compose(accountant, events)
    return float(accountant.get_epsilon(delta))
