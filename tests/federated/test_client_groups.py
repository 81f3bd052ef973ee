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


def test_grouping_refuses_distributed_dp_and_canaries():
    config = model.ModelConfig(num_items=10, dim=2)
    with pytest.raises(ValueError, match="distributed DP"):
        process.build_fedrec_process(config, aggregator=AggregatorConfig(kind=AggregatorKind.DP_DISTRIBUTED,
                                                                          noise_multiplier=1.0, noise_reporters=5),
                                     server_optimizer=process.ServerOptimizerConfig(), seed=0, grouped=True)
    with pytest.raises(ValueError, match="canaries"):
        process.build_fedrec_process(config, aggregator=AggregatorConfig(), server_optimizer=process.ServerOptimizerConfig(),
                                     seed=0, grouped=True, canaries=True)


def test_users_per_client_config():
    config = SimulationConfig(users_per_client=8)
    assert config.to_dict()["users_per_client"] == 8
    assert SimulationConfig.from_dict(config.to_dict()) == config
    assert "users_per_client" not in SimulationConfig().to_dict()  # earlier runs keep their digest
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="users_per_client"):
            SimulationConfig(users_per_client=bad)
    with pytest.raises(ConfigError, match="users_per_client"):
        SimulationConfig(users_per_client=4, dp="distributed", noise_multiplier=1.0)
    assert SimulationConfig(users_per_client=4, dp="adaptive", noise_multiplier=1.0).client_group_size == 4
    assert SimulationConfig().client_group_size == DEFAULT_USERS_PER_CLIENT  # grouped by default without DP
    assert SimulationConfig(users_per_client=1).client_group_size is None  # one TFF client per user
    assert SimulationConfig(users_per_client=7).client_group_size == 7
    for users_per_client in (None, 1):  # DP: one client per user, always
        private = SimulationConfig(dp="fixed", noise_multiplier=1.0, users_per_client=users_per_client)
        assert private.client_group_size is None


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


def _dp_process(config: model.ModelConfig, aggregator: AggregatorConfig, *, grouped: bool):
    return process.build_fedrec_process(config, aggregator=aggregator,
                                        server_optimizer=process.ServerOptimizerConfig(name="sgdm", learning_rate=0.5,
                                                                                       momentum=0.0),
                                        seed=1, grouped=grouped)


def test_grouped_dp_clips_every_user_alone(tff_runtime, small_split):
    """Fixed clip, no noise: a clip that binds for some users and not others (their first-round
    norms are ~0.77-1.8), so a group clipping its sum, or weighting by examples, would differ;
    grouped rounds equal per-user rounds, and the DP event the accountant reads is the same."""
    config = model.ModelConfig(num_items=small_split.num_items, dim=4, local_steps=3, implicit_learning_rate=2.0)
    aggregator = AggregatorConfig(kind=AggregatorKind.DP_FIXED, noise_multiplier=0.0, clip=0.9,
                                  expected_clients_per_round=25.0, part_scale=0.5)
    population = simulation.ClientPopulation(small_split)
    per_user, grouped = (_dp_process(config, aggregator, grouped=g) for g in (False, True))
    state_a, state_b = per_user.initialize(), grouped.initialize()
    rng = np.random.default_rng(1)
    for users_per_client in (7, 25):
        cohort = rng.choice(len(population), 25, replace=False)
        state_a = per_user.next(state_a, population.datasets(cohort)).state
        state_b = grouped.next(state_b, population.groups(cohort, users_per_client)).state
        for got, want in zip(_params(grouped, state_b), _params(per_user, state_a)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    assert simulation._applied_event(state_b) == simulation._applied_event(state_a)


def test_per_user_records_query_sums_the_inner_records_user_by_user():
    """The adaptive query's record: each user's clipped update and unclipped indicator, summed."""
    from tff_pipeline.federated.aggregation import PerUserRecordsQuery, dp_query

    inner = dp_query(AggregatorConfig(kind=AggregatorKind.DP_ADAPTIVE, noise_multiplier=0.5, clip=1.0,
                                      expected_clients_per_round=10.0))
    rng = np.random.default_rng(2)
    stacked = (tf.constant(rng.normal(0, 0.6, (5, 3, 2)), tf.float32), tf.constant(rng.normal(0, 0.3, (5,)), tf.float32))
    params = inner.derive_sample_params(inner.initial_global_state())
    got = PerUserRecordsQuery(inner).preprocess_record(params, stacked)
    want = None
    for u in range(5):
        record = inner.preprocess_record(params, tuple(t[u] for t in stacked))
        want = record if want is None else tf.nest.map_structure(tf.add, want, record)
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    norms = [np.sqrt(sum(float(tf.reduce_sum(t[u] ** 2)) for t in stacked)) for u in range(5)]
    assert 0 < sum(n > 1.0 for n in norms) < 5  # some users clipped, some not: the indicator sum is informative


def test_grouped_dp_run_spends_the_budget_a_per_user_run_spends(tff_runtime, small_split):
    base = SimulationConfig(rounds=3, clients_per_round=15, dim=4, eval_every=1000, baselines=False, dp="adaptive",
                            target_epsilon=8.0, delta=1e-3)
    assert base.client_group_size is None  # DP: one client per user unless asked
    per_user = simulation.run(base, small_split).report
    grouped = simulation.run(dataclasses.replace(base, users_per_client=4), small_split).report
    assert grouped["privacy"]["epsilon_rdp"] == pytest.approx(per_user["privacy"]["epsilon_rdp"], rel=1e-9)
    assert [r["cohort"] for r in grouped["history"]] == [r["cohort"] for r in per_user["history"]]
    assert all(r["clip"] is not None for r in grouped["history"])
