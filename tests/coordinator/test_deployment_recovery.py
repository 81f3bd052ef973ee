"""A deployment reaches the simulation's model, and survives `kill -9` of its coordinator and devices.

- Without DP and with the simulation's cohorts (`--selection seeded`), real rounds over real
  device processes (LiteRT client_update, SecAgg+, fixed point) reach the model `fedrec simulate`
  reaches (TFF client work, float mean) within quantization and float32 error.
- The coordinator killed with SIGKILL (between and inside rounds) and a device process killed
  mid-round: after restarts the run completes, no completed round is lost, and ε is the ledger's
  (never below what the applied rounds spent).
- Slow tier: ten kills at random points give exactly the model of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from coordinator.config import DeploymentConfig
from coordinator.state_store import StateStore
from tests.coordinator.deployment import Deployment
from tff_pipeline.privacy.ledger import PrivacyLedger

NUM_USERS, NUM_ITEMS = 24, 150
SECURE_AGGREGATION_PHASES = ("advertise_keys", "share_keys", "masked_input", "unmask")


@pytest.fixture(scope="module")
def small_movielens(tmp_path_factory):
    """A small MovieLens-format data set (ratings.csv + movies.csv): 24 users, 150 items."""
    folder = tmp_path_factory.mktemp("small-movielens")
    rng = np.random.default_rng(3)
    with open(folder / "ratings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for user in range(1, NUM_USERS + 1):
            items = rng.choice(np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(8, 20)), replace=False)
            for step, item in enumerate(items):
                writer.writerow([user, int(item), float(rng.integers(1, 11)) / 2, 1_000_000 + step])
    with open(folder / "movies.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        for item in range(1, NUM_ITEMS + 1):
            writer.writerow([item, f"Movie {item}", "Drama"])
    return folder


def _split(folder):
    from tff_pipeline.data import load_dataset

    return load_dataset("movielens-csv", data_dir=str(folder), seed=0)


def _final_params(run: Deployment) -> list[np.ndarray]:
    store = StateStore(run.state_dir)
    try:
        checkpoint = store.latest_checkpoint()
        return checkpoint.arrays["params"]
    finally:
        store.close()


@pytest.mark.e2e
def test_a_deployment_without_dp_reaches_the_simulations_model(tmp_path, small_movielens):
    from tff_pipeline.config import SimulationConfig

    sim_out = tmp_path / "simulate"
    done = subprocess.run(
        [sys.executable, "-m", "fedrec_cli", "simulate", "--dataset", "movielens-csv", "--data-dir",
         str(small_movielens), "--rounds", "4", "--clients-per-round", "6", "--no-baselines", "--quiet",
         "--out", str(sim_out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    config = SimulationConfig.from_dict(json.loads((sim_out / "config.json").read_text())["config"])
    with np.load(sim_out / "final_model.npz") as saved:
        simulated = [saved["item_embeddings"], saved["item_bias"], saved["global_mean"]]

    split = _split(small_movielens)
    population = len(np.unique(split.train.users))
    deployment = DeploymentConfig(selection="seeded", over_selection=0.0, selection_timeout_s=60,
                                  phase_timeout_s=30, report_window_s=30, straggler_grace_s=5.0, export_every=100)
    run = Deployment(tmp_path / "deploy", split, training=config, deployment=deployment,
                     fleets=[(population // 2, "ideal"), (population - population // 2, "ideal")],
                     record_uploads=False, capture=False)
    try:
        run.start()
        final = run.wait_until(lambda s: s.phase == "finished", timeout_s=300, what="training to finish")
    finally:
        run.stop()
    assert final.rounds_completed == 4 and final.rounds_abandoned == 0
    deployed = _final_params(run)
    for name, sim, dep in zip(("item_embeddings", "item_bias", "global_mean"), simulated, deployed):
        assert sim.shape == dep.shape
        # TFF's float32 client work against LiteRT's, then 22 fraction bits: differences ~1e-6.
        np.testing.assert_allclose(dep, sim, atol=2e-5, rtol=0, err_msg=name)
    initial_distance = max(float(np.max(np.abs(s))) for s in simulated[:2])
    assert initial_distance > 1e-3  # the model did move: equality is not trivial


@pytest.mark.e2e
def test_kill_9_of_the_coordinator_and_a_device_process_loses_no_completed_round(tmp_path, small_movielens):
    from tff_pipeline.config import SimulationConfig

    rounds = 4  # two before the first kill, at least one after each restart
    split = _split(small_movielens)
    training = SimulationConfig(dataset="movielens-csv", data_dir=str(small_movielens), rounds=rounds,
                                clients_per_round=8, dp="adaptive", noise_multiplier=0.7, target_epsilon=200.0,
                                dim=8, baselines=False)
    deployment = DeploymentConfig(min_reporters=3, selection_timeout_s=15, phase_timeout_s=15, report_window_s=15,
                                  straggler_grace_s=1.0, export_every=2)
    run = Deployment(tmp_path / "deploy", split, training=training, deployment=deployment,
                     fleets=[(16, "slow"), (8, "slow")], record_uploads=False, capture=False)
    try:
        run.start()
        run.wait_until(lambda s: s.rounds_completed >= 2, timeout_s=240, what="two rounds")
        run.kill_coordinator()  # between or inside rounds, wherever it is now
        completed_before = _completed_rounds(run)
        run.start_coordinator()
        status = run.wait_until(lambda s: True, timeout_s=60, what="the restarted coordinator")
        assert status.rounds_completed >= completed_before  # nothing completed was lost
        run.wait_until(lambda s: s.phase in SECURE_AGGREGATION_PHASES, timeout_s=120, what="a round in progress",
                       interval_s=0.05)
        run.kill_coordinator()  # inside a round: it must be counted as interrupted, not completed
        run.start_coordinator()
        run.wait_until(lambda s: s.phase in SECURE_AGGREGATION_PHASES[1:], timeout_s=120,
                       what="a round in progress", interval_s=0.05)
        run.kill_fleet(run.fleets[1])  # a third of the devices die mid-round
        run.start_fleet(run.fleets[1])  # and come back with their stored identity and ratings
        final = run.wait_until(lambda s: s.phase == "finished", timeout_s=300, what="training to finish")
    finally:
        run.stop()
    assert final.rounds_completed == rounds
    store = StateStore(run.state_dir)
    try:
        statuses = [r.status for r in store.rounds()]
        ledger = PrivacyLedger(store.connection)
        events = ledger.events()
        spent = ledger.epsilon(training.delta)
    finally:
        store.close()
    assert statuses.count("completed") == rounds
    assert statuses.count("interrupted") >= 1
    # Every applied round was charged before its result was used; an interrupted one may be too.
    assert len(events) >= rounds
    assert final.epsilon == pytest.approx(spent.rdp, rel=1e-9)
    assert "Traceback" not in run.log_tail("fleet-0.log", lines=10_000)


def _completed_rounds(run: Deployment) -> int:
    store = StateStore(run.state_dir)
    try:
        return store.round_counts()["completed"]
    finally:
        store.close()


@pytest.mark.slow
def test_ten_kills_at_random_points_give_the_model_of_an_uninterrupted_run(tmp_path, small_movielens):
    from tff_pipeline.config import SimulationConfig

    rounds = 12
    split = _split(small_movielens)
    population = len(np.unique(split.train.users))
    training = SimulationConfig(dataset="movielens-csv", data_dir=str(small_movielens), rounds=rounds,
                                clients_per_round=6, baselines=False)
    deployment = DeploymentConfig(selection="seeded", over_selection=0.0, selection_timeout_s=60,
                                  phase_timeout_s=30, report_window_s=30, straggler_grace_s=5.0, export_every=100)
    results = []
    for kills in (0, 10):
        run = Deployment(tmp_path / f"kills-{kills}", split, training=training, deployment=deployment,
                         fleets=[(population, "ideal")], record_uploads=False, capture=False)
        rng = random.Random(kills)
        try:
            run.start()
            for _ in range(kills):
                run.wait_until(lambda s: True, timeout_s=120, what="the coordinator")
                time.sleep(rng.uniform(0.0, 3.0))
                if run.coordinator.poll() is None:
                    run.kill_coordinator()
                run.start_coordinator()
            final = run.wait_until(lambda s: s.phase == "finished", timeout_s=600, what="training to finish")
        finally:
            run.stop()
        assert final.rounds_completed == rounds
        results.append(_final_params(run))
    for clean, killed in zip(*results):
        np.testing.assert_array_equal(killed, clean)
