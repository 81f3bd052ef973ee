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


def test_distributed_dp_charges_the_skellam_rounds_tff_applied_as_the_ledger_would(tff_runtime, small_split, tmp_path):
    """--dp distributed: each round's event is the Skellam release TFF's DistributedDpSumFactory
    measured (its scaled, inflated L2 bound and noise shares), charged for at most m shares; the
    report's ε is those events composed (the ledger's figure), near the plan's; the model trains."""
    from protocol.distributed_dp import DistributedDpSpec
    from tff_pipeline.privacy import distributed, skellam

    config = _config(dp="distributed", dp_bits=18, rounds=6)
    report = simulation.run(config, small_split, out_dir=tmp_path / "run").report
    applied = _saved_events(tmp_path / "run")
    assert len(applied) == 6 and all(skellam.is_skellam(e) for e in applied)
    spent = _ledger_of(applied, tmp_path).epsilon(DELTA)
    assert report["privacy"]["epsilon_rdp"] == spent.rdp and report["privacy"]["epsilon_pld"] is None
    q = report["privacy"]["sampling_rate"]
    num_items = small_split.num_items
    m = distributed.simulation_noise_reporters(20, q)
    cohorts = [row["cohort"] for row in report["history"]]
    # TFF computes its scale for m clients (it calls m its expected clients); the numpy spec for m
    # clients has the same scale, so the planned variance per share is the measured one.
    tff_like = DistributedDpSpec(bits=18, l2_clip=0.5, noise_multiplier=1.0, clients=m, noise_reporters=m,
                                 dim=distributed.model_values(num_items, 4))
    for event, cohort in zip(applied, cohorts):
        shares = min(cohort, m) if cohort else m
        assert event.event.variance == pytest.approx(shares * tff_like.scaled_local_variance, rel=1e-5)
        assert event.event.l2_sensitivity == pytest.approx(tff_like.scaled_l2_sensitivity, rel=1e-5)
    assert report["final"]["rmse"] is not None and report["final"]["rmse"] < 5


def test_distributed_dp_plans_a_budget_with_the_skellam_accountant_and_states_bits_and_upload():
    from tff_pipeline.privacy import distributed, planner

    shape = planner.DistributedShape(dim=distributed.model_values(300, 16), bits=20, clip=0.5)
    plan = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=400, clients_per_round=40, rounds=100,
                               distributed=shape)
    assert plan.distributed is not None and plan.epsilon_rdp <= 8.0 * (1 + 1e-9)
    spec = plan.distributed
    assert distributed.epsilon(spec, sampling_rate=0.1, rounds=100, delta=1e-4) == pytest.approx(plan.epsilon_rdp)
    slightly_less = shape.spec(plan.noise_multiplier * 0.99, 40, 0.1)
    assert distributed.epsilon(slightly_less, sampling_rate=0.1, rounds=100, delta=1e-4) > 8.0
    text = plan.describe()
    assert "b = 20 bits" in text and f"{spec.upload_bytes} bytes per device upload" in text
    assert spec.upload_bytes == (spec.padded_dim * 20 + 7) // 8


def test_distributed_dp_plans_the_cohort_with_the_least_noise_on_the_mean():
    """Left unset, distributed DP's cohort is the candidate fraction whose calibrated z puts the
    least noise on the averaged update (its sampled bound is loose at a third of the users)."""
    from tff_pipeline.privacy import distributed, planner

    shape = planner.DistributedShape(dim=distributed.model_values(500, 8), bits=20, clip=0.5)
    plan = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=400, rounds=300, distributed=shape)
    assert plan.planned == ("clients_per_round",)
    candidates = {round(400 * f) for f in planner.DISTRIBUTED_COHORT_FRACTIONS}
    assert plan.clients_per_round in candidates and plan.epsilon_rdp <= 8.0 * (1 + 1e-9)
    noise = {c: shape.noise_on_mean(shape.calibrate(8.0, c / 400, 300, 1e-4, c), c, c / 400) for c in candidates}
    assert noise[plan.clients_per_round] == min(noise.values())
    assert noise[plan.clients_per_round] < 0.6 * noise[round(400 / 3)]  # measured: 1.58 against 3.20 times central's
    central = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=400, rounds=300)
    assert central.clients_per_round == round(400 / 3)  # central DP keeps a third of the users
