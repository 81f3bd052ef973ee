"""Client groups (several users per TFF client, their work vectorized): the same FedAvg round as
one user per client, up to float summation order (real TFF, small synthetic data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tff_pipeline import model, simulation
from tff_pipeline.config import DEFAULT_USERS_PER_CLIENT, ConfigError, SimulationConfig
from tff_pipeline.data import synthetic_split
from tff_pipeline.federated import client_work, process
from tff_pipeline.federated.aggregation import AggregatorConfig, AggregatorKind


@pytest.fixture(scope="module")
def small_split():
    return synthetic_split(seed=5, num_users=40, num_items=60, num_negatives=10, mean_ratings_per_user=12)


def _process(config: model.ModelConfig, *, grouped: bool):
    return process.build_fedrec_process(
        config, aggregator=AggregatorConfig(), server_optimizer=process.ServerOptimizerConfig(name="adam",
                                                                                              learning_rate=0.05),
        seed=1, grouped=grouped)


def _params(learning_process, state):
    return [np.asarray(t) for t in learning_process.get_model_weights(state).trainable]


@pytest.mark.parametrize("implicit", [True, False])
def test_grouped_rounds_equal_per_user_rounds(tff_runtime, small_split, implicit):
    config = model.ModelConfig(num_items=small_split.num_items, dim=4, local_steps=3,
                               implicit_learning_rate=2.0 if implicit else 0.0)
    population = simulation.ClientPopulation(small_split)
    per_user, grouped = _process(config, grouped=False), _process(config, grouped=True)
    state_a, state_b = per_user.initialize(), grouped.initialize()
    rng = np.random.default_rng(0)
    for users_per_client in (7, 1, 40):  # uneven groups, groups of one, one group of everyone
        cohort = rng.choice(len(population), 25, replace=False)
        state_a = per_user.next(state_a, population.datasets(cohort)).state
        state_b = grouped.next(state_b, population.groups(cohort, users_per_client)).state
        for got, want in zip(_params(grouped, state_b), _params(per_user, state_a)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(_params(grouped, state_b),
                                                       _params(grouped, grouped.initialize())))


def test_group_sums_equal_per_user_updates_weighted_as_the_mean_weighs_them(small_split):
    config = model.ModelConfig(num_items=small_split.num_items, dim=3, local_steps=2, implicit_learning_rate=1.0)
    population = simulation.ClientPopulation(small_split)
    params = model.initial_global_params(config, seed=2)
    users = population.datasets(np.arange(6))
    want = [np.zeros(t.shape, np.float64) for t in params] + [np.zeros(params[0].shape, np.float64)]
    for data in users:
        out = model.client_update(params, tf.constant(data["item_ids"]), tf.constant(data["ratings"]), config)
        n = len(data["ratings"])
        for k, part in enumerate((*out.delta, out.implicit_delta)):
            want[k] += (1.0 if k == 3 else n) * part.numpy()
    group = client_work.group_data(users)
    got = model.client_update_group(params, *(tf.constant(group[key]) for key in ("item_ids", "ratings",
                                                                                  "user_index", "num_users")), config)
    for k, part in enumerate((*got.weighted_delta, got.implicit_delta)):
        np.testing.assert_allclose(part.numpy(), want[k], rtol=1e-5, atol=1e-6)
    assert float(got.num_examples) == sum(len(d["ratings"]) for d in users)
    assert float(got.num_users) == 6


def test_groups_are_balanced_and_cover_the_cohort(small_split):
    population = simulation.ClientPopulation(small_split)
    cohort = np.arange(23)
    groups = population.groups(cohort, 10)
    assert [int(g["num_users"]) for g in groups] == [8, 8, 7]
    assert sum(len(g["ratings"]) for g in groups) == sum(len(d["ratings"]) for d in population.datasets(cohort))
    assert population.clients(cohort, None) == population.datasets(cohort)


def test_grouping_refuses_dp():
    config = model.ModelConfig(num_items=10, dim=2)
    with pytest.raises(ValueError, match="plain mean only"):
        process.build_fedrec_process(config, aggregator=AggregatorConfig(kind=AggregatorKind.DP_FIXED,
                                                                          noise_multiplier=1.0),
                                     server_optimizer=process.ServerOptimizerConfig(), seed=0, grouped=True)


def test_users_per_client_config():
    config = SimulationConfig(users_per_client=8)
    assert config.to_dict()["users_per_client"] == 8
    assert SimulationConfig.from_dict(config.to_dict()) == config
    assert "users_per_client" not in SimulationConfig().to_dict()  # earlier runs keep their digest
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="users_per_client"):
            SimulationConfig(users_per_client=bad)
    with pytest.raises(ConfigError, match="users_per_client"):
        SimulationConfig(users_per_client=4, dp="fixed", noise_multiplier=1.0)
    assert SimulationConfig().client_group_size == DEFAULT_USERS_PER_CLIENT  # grouped by default without DP
    assert SimulationConfig(users_per_client=1).client_group_size is None  # one TFF client per user
    assert SimulationConfig(users_per_client=7).client_group_size == 7
    for users_per_client in (None, 1):  # DP: one client per user, always
        assert SimulationConfig(dp="fixed", noise_multiplier=1.0, users_per_client=users_per_client).client_group_size is None


def test_grouped_run_ends_where_per_user_run_ends(tff_runtime, small_split):
    base = SimulationConfig(rounds=3, clients_per_round=20, dim=4, eval_every=1000, baselines=False,
                            server_learning_rate=0.05)
    per_user = simulation.run(dataclasses.replace(base, users_per_client=1), small_split)
    for grouped_config in (base, dataclasses.replace(base, users_per_client=6)):  # the default groups, and 6
        grouped = simulation.run(grouped_config, small_split)
        for got, want in zip(grouped.params, per_user.params):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    assert per_user.report["config"]["users_per_client"] == 1
    assert grouped.report["config"]["users_per_client"] == 6
