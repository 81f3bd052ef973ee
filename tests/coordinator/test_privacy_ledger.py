"""The ε ledger: durable, committed before it returns, idempotent per round, and composing to the
same ε as the plan's accounting (`tff_pipeline.privacy.accounting`)."""

from __future__ import annotations

import sqlite3

import dp_accounting
import pytest

from tff_pipeline.privacy import accounting, events
from tff_pipeline.privacy import ledger as privacy_ledger
from tff_pipeline.privacy.ledger import LedgerError, PrivacyLedger

DELTA = 1e-5
Q = 0.02


def _connect(path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)  # as coordinator.state_store


def _adaptive_event(z: float, clients: float) -> dp_accounting.DpEvent:
    """The event of an adaptive-clipping round, split as TFF's `adaptive_clip_noise_params` splits
    z between the update and the clipped count (of stddev s, the rule of
    `aggregation.adaptive_clipped_count_stddev`; not imported: it would import TFF)."""
    s = max(0.05 * clients, z)
    return dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent((z**-2 - (2 * s) ** -2) ** -0.5), dp_accounting.GaussianDpEvent(2 * s),
    ])


def test_fixed_dp_epsilon_equals_the_plans_accounting(tmp_path):
    z, rounds = 1.1, 40
    ledger = PrivacyLedger(_connect(tmp_path / "c.db"))
    for round_num in range(rounds):
        ledger.record(round_num, dp_accounting.GaussianDpEvent(z), Q)
    eps = ledger.epsilon(DELTA)
    assert eps.rdp == pytest.approx(accounting.epsilon_rdp(z, Q, rounds, DELTA), rel=1e-12)
    assert eps.pld == pytest.approx(accounting.epsilon_pld(z, Q, rounds, DELTA), rel=1e-12)
    assert 0 < eps.pld < eps.rdp


def test_adaptive_rounds_cost_the_total_noise_multiplier(tmp_path):
    """TFF splits z between the update and the clipped count so that the two compose to z."""
    z, rounds = 0.9, 25
    ledger = PrivacyLedger(_connect(tmp_path / "c.db"))
    for round_num in range(rounds):
        ledger.record(round_num, _adaptive_event(z, clients=10.0), Q)
    rdp_eps, pld_eps = ledger.epsilon(DELTA)
    assert rdp_eps == pytest.approx(accounting.epsilon_rdp(z, Q, rounds, DELTA), rel=1e-9)
    assert pld_eps == pytest.approx(accounting.epsilon_pld(z, Q, rounds, DELTA), rel=1e-6)


def test_events_survive_reopening_and_are_committed_before_record_returns(tmp_path):
    path = tmp_path / "c.db"
    first = _connect(path)
    ledger = PrivacyLedger(first)
    reader = _connect(path)  # another connection sees the row as soon as record returns
    ledger.record(0, dp_accounting.GaussianDpEvent(1.3), Q)
    assert reader.execute("SELECT round_num FROM privacy_ledger").fetchall() == [(0,)]
    ledger.record(1, _adaptive_event(1.3, clients=10.0), 0.5)
    expected = [
        privacy_ledger.LedgerEntry(0, dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(1.3))),
        privacy_ledger.LedgerEntry(1, dp_accounting.PoissonSampledDpEvent(0.5, _adaptive_event(1.3, clients=10.0))),
    ]
    assert PrivacyLedger(reader).events() == expected
    first.close()
    reader.close()
    legacy = sqlite3.connect(path)  # Python's default (legacy) transaction mode works too
    reopened = PrivacyLedger(legacy)
    assert reopened.events() == expected
    reopened.record(2, dp_accounting.GaussianDpEvent(1.3), Q)
    assert not legacy.in_transaction
    assert len(PrivacyLedger(_connect(path)).events()) == 3


def test_recording_a_round_again_is_a_no_op_and_another_event_is_refused(tmp_path):
    ledger = PrivacyLedger(_connect(tmp_path / "c.db"))
    event = _adaptive_event(1.0, clients=20.0)
    ledger.record(3, event, Q)
    ledger.record(3, _adaptive_event(1.0, clients=20.0), Q)
    assert len(ledger.events()) == 1
    with pytest.raises(LedgerError, match="round 3"):
        ledger.record(3, dp_accounting.GaussianDpEvent(1.0), Q)
    with pytest.raises(LedgerError, match="round 3"):
        ledger.record(3, event, Q / 2)
    assert [entry.event.event for entry in ledger.events()] == [event]


def test_would_exceed_the_budget(tmp_path):
    z = 1.0
    budget = accounting.epsilon_rdp(z, Q, 10, DELTA)  # exactly 10 rounds' worth
    ledger = PrivacyLedger(_connect(tmp_path / "c.db"))
    for round_num in range(9):
        assert not ledger.would_exceed(dp_accounting.GaussianDpEvent(z), Q, target_epsilon=budget, delta=DELTA)
        ledger.record(round_num, dp_accounting.GaussianDpEvent(z), Q)
    assert not ledger.would_exceed(dp_accounting.GaussianDpEvent(z), Q, target_epsilon=budget * (1 + 1e-9),
                                   delta=DELTA)
    ledger.record(9, dp_accounting.GaussianDpEvent(z), Q)
    assert ledger.would_exceed(dp_accounting.GaussianDpEvent(z), Q, target_epsilon=budget * (1 + 1e-9), delta=DELTA)
    assert ledger.would_exceed(dp_accounting.GaussianDpEvent(0.0), 1e-6, target_epsilon=1e6, delta=DELTA)
    assert len(ledger.events()) == 10  # asking records nothing


def test_refusals(tmp_path):
    connection = _connect(tmp_path / "c.db")
    ledger = PrivacyLedger(connection)
    with pytest.raises(ValueError, match="LaplaceDpEvent"):
        ledger.record(0, dp_accounting.LaplaceDpEvent(1.0), Q)
    with pytest.raises(ValueError, match="NonPrivateDpEvent"):
        ledger.record(0, dp_accounting.ComposedDpEvent([dp_accounting.NonPrivateDpEvent()]), Q)
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            ledger.record(0, dp_accounting.GaussianDpEvent(1.0), rate)
    for round_num in (-1, True, 1.0):
        with pytest.raises(ValueError, match="round_num"):
            ledger.record(round_num, dp_accounting.GaussianDpEvent(1.0), Q)
    with pytest.raises(ValueError, match="delta"):
        ledger.epsilon(0.0)
    connection.execute("BEGIN")
    with pytest.raises(LedgerError, match="transaction"):
        ledger.record(0, dp_accounting.GaussianDpEvent(1.0), Q)
    connection.execute("ROLLBACK")
    assert ledger.events() == []
    ledger.record(0, dp_accounting.GaussianDpEvent(1.0), Q)
    connection.execute("UPDATE privacy_ledger SET event = '{\"type\": \"Laplace\", \"noise_multiplier\": 1}'")
    with pytest.raises(LedgerError, match="round 0"):
        ledger.epsilon(DELTA)


def test_empty_and_non_private_ledgers(tmp_path):
    ledger = PrivacyLedger(_connect(tmp_path / "c.db"))
    assert ledger.epsilon(DELTA) == (0.0, 0.0)
    ledger.record(0, dp_accounting.NoOpDpEvent(), Q)
    assert ledger.epsilon(DELTA) == (0.0, 0.0)
    ledger.record(1, dp_accounting.GaussianDpEvent(0.0), Q)
    assert ledger.epsilon(DELTA) == (float("inf"), float("inf"))


@pytest.mark.parametrize("event", [
    dp_accounting.NoOpDpEvent(),
    dp_accounting.GaussianDpEvent(0.75),
    dp_accounting.PoissonSampledDpEvent(0.125, dp_accounting.GaussianDpEvent(1 / 3)),
    dp_accounting.SelfComposedDpEvent(
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(1.1), dp_accounting.NoOpDpEvent()]), 7),
])
def test_events_round_trip_through_json(event):
    text = events.encode_event(event)
    assert events.decode_event(text) == event
    assert events.encode_event(events.decode_event(text)) == text
