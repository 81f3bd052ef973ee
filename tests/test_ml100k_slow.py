"""Slow tier: short federated runs on the real MovieLens-100K u1 split (skipped without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tff_pipeline import baselines, simulation
from tff_pipeline.config import NON_PRIVATE_PRESET, PRIVATE_PRESET, SimulationConfig

ML100K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def u1():
    if not (ML100K_DIR / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K_DIR}: its license forbids redistribution")
    from tff_pipeline.data import load_ml100k

    return load_ml100k(ML100K_DIR, split="u1")


def test_federated_u1_beats_biases_in_300_rounds(tff_runtime, u1):
    config = SimulationConfig(dataset="ml-100k", rounds=300, clients_per_round=100, eval_every=10**6,
                              baselines=False, **NON_PRIVATE_PRESET)
    final = simulation.run(config, u1).report["final"]
    assert final["rmse"] < baselines.biases(u1)["rmse"]
    assert final["rmse"] < 0.945


def test_private_u1_run_is_far_below_local_only(tff_runtime, u1):
    config = SimulationConfig(
        dataset="ml-100k", rounds=100, clients_per_round=100, eval_every=10**6, baselines=False,
        dp="adaptive", target_epsilon=8.0, delta=1e-4, **PRIVATE_PRESET,
    )
    report = simulation.run(config, u1).report
    assert report["privacy"]["epsilon_rdp"] <= 8.0
    assert report["final"]["rmse"] < baselines.local_only(u1)["rmse"] - 0.03
