"""One privacy path: the simulation's ε comes from the DP events its aggregator applied, composed
by the function the coordinator's ledger composes with, and for fixed DP it is the plan's ε."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import dp_accounting
import pytest

from tests.interrupted_runs import interrupt_after
from tff_pipeline import simulation
from tff_pipeline.config import SimulationConfig
from tff_pipeline.data import synthetic_split
from tff_pipeline.privacy import accounting, events
from tff_pipeline.privacy.ledger import PrivacyLedger
from tff_pipeline.run_folder import CHECKPOINT_INDEX

DELTA = 1e-3


@pytest.fixture(scope="module")
def small_split():
    return synthetic_split(seed=3, num_users=150, num_items=120, num_negatives=20, mean_ratings_per_user=30)


def _config(**overrides) -> SimulationConfig:
    base = SimulationConfig(rounds=4, clients_per_round=20, dim=4, eval_every=1000, baselines=False, delta=DELTA,
                            dp="fixed", noise_multiplier=1.0, clip=0.5)
    return dataclasses.replace(base, **overrides)


def _saved_events(out_dir) -> list:
    meta = json.loads((out_dir / "checkpoints" / CHECKPOINT_INDEX).read_text())["meta"]
    return [events.decode_event(text) for text in meta["dp_events"]]


def _ledger_of(applied: list, tmp_path) -> PrivacyLedger:
    """The simulation's events recorded as the coordinator records its rounds."""
    ledger = PrivacyLedger(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None))
    for round_num, event in enumerate(applied):
        ledger.record(round_num, event.event, event.sampling_probability)
    return ledger


@pytest.mark.parametrize("dp", ["fixed", "adaptive"])
def test_the_simulations_epsilon_is_the_ledgers_for_its_events(tff_runtime, small_split, tmp_path, dp):
    config = _config(dp=dp)
    report = simulation.run(config, small_split, out_dir=tmp_path / "run").report
    applied = _saved_events(tmp_path / "run")
    assert len(applied) == 4 and all(isinstance(e, dp_accounting.PoissonSampledDpEvent) for e in applied)
    if dp == "adaptive":  # what the query applied: the update's and the clipped count's Gaussians
        assert all(len(e.event.events) == 2 for e in applied)
    spent = _ledger_of(applied, tmp_path).epsilon(DELTA)
    assert (report["privacy"]["epsilon_rdp"], report["privacy"]["epsilon_pld"]) == (spent.rdp, spent.pld)
    assert report["history"][-1]["epsilon_rdp"] == spent.rdp
    # TFF splits z between the update and the clipped count so that they compose to z: the plan's ε
    # (up to the float32 in which TF computes the event's noise multipliers).
    q = report["privacy"]["sampling_rate"]
    assert spent.rdp == pytest.approx(accounting.epsilon_rdp(1.0, q, 4, DELTA), rel=1e-6)
    assert spent.pld == pytest.approx(accounting.epsilon_pld(1.0, q, 4, DELTA), rel=1e-6)


def test_fixed_dp_event_epsilon_is_the_plans_every_round_empty_cohorts_and_resume_included(
        tff_runtime, small_split, tmp_path):
    """z = 1 at clip 0.5 is exact in float32, so the events are exactly the plan's rounds. An
    expected cohort of 1 in 150 leaves rounds 1 and 4 of seed 2 empty; they are charged as the
    plan charges them (round 1 by the initial state's event, round 4 after resuming by the event
    of the state read from the checkpoint). A resumed run continues the events of its checkpoint."""
    config = _config(rounds=6, clients_per_round=1, seed=2)
    report = simulation.run(config, small_split).report
    q = report["privacy"]["sampling_rate"]
    assert [row["cohort"] == 0 for row in report["history"]] == [True, False, False, True, False, False]
    for row in report["history"]:
        assert row["epsilon_rdp"] == accounting.epsilon_rdp(1.0, q, row["round"], DELTA)
    assert report["privacy"]["epsilon_rdp"] == accounting.epsilon_rdp(1.0, q, 6, DELTA)
    assert report["privacy"]["epsilon_pld"] == accounting.epsilon_pld(1.0, q, 6, DELTA)

    interrupt_after(config, small_split, tmp_path / "cut", 3)
    assert len(_saved_events(tmp_path / "cut")) == 3
    resumed = simulation.run(config, small_split, out_dir=tmp_path / "cut", resume=True).report
    assert len(_saved_events(tmp_path / "cut")) == 6
    assert resumed["privacy"]["epsilon_rdp"] == report["privacy"]["epsilon_rdp"]
    assert resumed["privacy"]["epsilon_pld"] == report["privacy"]["epsilon_pld"]


def test_a_checkpoint_from_before_the_events_were_kept_resumes_charged_as_planned(tff_runtime, small_split, tmp_path):
    """An older fedrec kept no events in its checkpoints and reported the plan's (z, q, T) ε: a DP
    run it interrupted resumes, its finished rounds charged the plan's event, and ends at the ε of
    an uninterrupted run (fixed z = 1, where events and plan agree exactly)."""
    config = _config(rounds=4)
    uninterrupted = simulation.run(config, small_split).report

    interrupt_after(config, small_split, tmp_path / "old", 2)
    index_path = tmp_path / "old" / "checkpoints" / CHECKPOINT_INDEX
    index = json.loads(index_path.read_text())
    del index["meta"]["dp_events"]  # as the older version wrote it
    index_path.write_text(json.dumps(index))
    resumed = simulation.run(config, small_split, out_dir=tmp_path / "old", resume=True).report
    assert resumed["privacy"]["epsilon_rdp"] == uninterrupted["privacy"]["epsilon_rdp"]
    assert resumed["privacy"]["epsilon_pld"] == uninterrupted["privacy"]["epsilon_pld"]
    assert len(_saved_events(tmp_path / "old")) == 4


def test_the_plan_is_calibrated_once_and_recorded_in_the_config(monkeypatch):
    """`plan_run` records z; `plan_privacy` (the simulation's and the coordinator's) reads it."""
    from tff_pipeline.privacy import planner

    config = SimulationConfig(dp="adaptive", target_epsilon=8.0, delta=1e-4)
    planned, plan = planner.plan_run(config, 400, rounds=None, clients_per_round=None)
    assert plan is not None and planned.planned_noise_multiplier == plan.noise_multiplier
    assert SimulationConfig.from_dict(planned.to_dict()) == planned  # config.json keeps it

    def refuse(**kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(accounting, "calibrate_noise_multiplier", refuse)
    ran = planner.plan_privacy(planned, 400)
    assert (ran.noise_multiplier, ran.sampling_rate, ran.rounds) == (plan.noise_multiplier, plan.sampling_rate,
                                                                      plan.rounds)
    assert planner.plan_run(planned, 400, rounds=None, clients_per_round=None) == (planned, None)
    with pytest.raises(ValueError, match="another population"):  # q = 1/3 of 40, not of 400
        planner.plan_privacy(dataclasses.replace(planned, clients_per_round=400), 400)
    assert "planned_noise_multiplier" not in config.to_dict()  # unplanned configs keep their digest
