"""End-to-end behaviour of a federated run (real TFF, tiny synthetic data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.interrupted_runs import interrupt_after
from tff_pipeline import baselines, simulation
from tff_pipeline.config import SimulationConfig
from tff_pipeline.data import synthetic_split


@pytest.fixture(scope="module")
def small_split():
    return synthetic_split(seed=3, num_users=150, num_items=120, num_negatives=20, mean_ratings_per_user=30)


def _config(**overrides) -> SimulationConfig:
    base = SimulationConfig(
        rounds=40, clients_per_round=30, dim=8, eval_every=1000, baselines=False,
        server_optimizer="adam", server_learning_rate=0.02, server_momentum=0.9,
    )
    return dataclasses.replace(base, **overrides)


def test_federated_run_beats_bias_only_and_local_only(tff_runtime, small_split):
    result = simulation.run(_config(), small_split)
    federated_rmse = result.report["final"]["rmse"]
    assert federated_rmse < baselines.biases(small_split)["rmse"]
    assert federated_rmse < baselines.local_only(small_split)["rmse"]


def test_resume_ends_where_uninterrupted_run_ends(tff_runtime, small_split, tmp_path):
    config = _config(rounds=6)
    uninterrupted = simulation.run(config, small_split, out_dir=tmp_path / "full")

    interrupt_after(config, small_split, tmp_path / "cut", 3)
    resumed = simulation.run(config, small_split, out_dir=tmp_path / "cut", resume=True)

    for got, want in zip(resumed.params, uninterrupted.params):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert [r["cohort"] for r in resumed.report["history"]] == [
        r["cohort"] for r in uninterrupted.report["history"]
    ]
    assert resumed.report["final"]["rmse"] == pytest.approx(uninterrupted.report["final"]["rmse"], abs=1e-5)


def test_resume_refuses_a_different_config(tff_runtime, small_split, tmp_path):
    simulation.run(_config(rounds=2), small_split, out_dir=tmp_path)
    with pytest.raises(ValueError, match="configuration differs"):
        simulation.run(_config(rounds=2, dim=4), small_split, out_dir=tmp_path, resume=True)


def test_dp_run_reports_privacy_within_target(tff_runtime, small_split):
    config = _config(rounds=5, dp="adaptive", target_epsilon=8.0, delta=1e-3)
    report = simulation.run(config, small_split).report
    privacy = report["privacy"]
    assert privacy["rounds"] == 5
    assert 0 < privacy["epsilon_pld"] <= privacy["epsilon_rdp"] <= 8.0
    assert privacy["noise_multiplier"] > 0
    assert all("epsilon_rdp" in row for row in report["history"])


def test_dp_with_noise_and_budget_stops_before_exceeding(tff_runtime, small_split):
    config = _config(rounds=500, dp="fixed", noise_multiplier=1.5, target_epsilon=2.0, delta=1e-3)  # 11 rounds
    report = simulation.run(config, small_split).report
    rounds = report["privacy"]["rounds"]
    assert 0 < rounds < 500
    assert report["privacy"]["epsilon_rdp"] <= 2.0
    from tff_pipeline.privacy import accounting

    assert accounting.epsilon_rdp(1.5, report["privacy"]["sampling_rate"], rounds + 1, 1e-3) > 2.0


def test_delta_too_large_is_refused(small_split):
    config = _config(dp="fixed", noise_multiplier=1.0, delta=1.0 / 100)
    with pytest.raises(ValueError, match="delta"):
        simulation.plan_privacy(config, num_clients=150)
