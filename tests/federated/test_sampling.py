"""Cohort sampling: seeded per (seed, round), the sizes the accountant and the runner assume."""

from __future__ import annotations

import numpy as np
import pytest

from tff_pipeline.federated import sampling


def test_poisson_is_deterministic_per_seed_and_round():
    a = sampling.poisson_cohort(num_clients=500, sampling_rate=0.1, seed=3, round_num=7)
    b = sampling.poisson_cohort(num_clients=500, sampling_rate=0.1, seed=3, round_num=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampling.poisson_cohort(num_clients=500, sampling_rate=0.1, seed=3, round_num=8))
    assert not np.array_equal(a, sampling.poisson_cohort(num_clients=500, sampling_rate=0.1, seed=4, round_num=7))


def test_uniform_is_deterministic_per_seed_and_round():
    a = sampling.uniform_cohort(num_clients=500, cohort_size=20, seed=3, round_num=7)
    b = sampling.uniform_cohort(num_clients=500, cohort_size=20, seed=3, round_num=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampling.uniform_cohort(num_clients=500, cohort_size=20, seed=3, round_num=8))
    assert not np.array_equal(a, sampling.uniform_cohort(num_clients=500, cohort_size=20, seed=4, round_num=7))


def test_round_order_does_not_matter():
    """A resumed run samples round r exactly as the uninterrupted run (no shared RNG state)."""
    forward = [sampling.uniform_cohort(num_clients=100, cohort_size=10, seed=1, round_num=r) for r in range(5)]
    backward = [sampling.uniform_cohort(num_clients=100, cohort_size=10, seed=1, round_num=r) for r in reversed(range(5))]
    for f, b in zip(forward, reversed(backward)):
        np.testing.assert_array_equal(f, b)


@pytest.mark.parametrize("num_clients,cohort_size", [(100, 10), (37, 37), (20, 50), (1000, 1)])
def test_uniform_has_exact_size_without_duplicates(num_clients, cohort_size):
    for r in range(20):
        cohort = sampling.uniform_cohort(num_clients=num_clients, cohort_size=cohort_size, seed=0, round_num=r)
        assert len(cohort) == min(cohort_size, num_clients)
        assert len(np.unique(cohort)) == len(cohort)
        assert cohort.min() >= 0 and cohort.max() < num_clients
        assert np.issubdtype(cohort.dtype, np.integer)


def test_uniform_covers_the_population_evenly():
    counts = np.zeros(50)
    for r in range(2000):
        counts[sampling.uniform_cohort(num_clients=50, cohort_size=5, seed=9, round_num=r)] += 1
    # each client is in a cohort with probability 0.1: 200 expected, sd ~13.4
    assert counts.min() > 200 - 6 * 13.4 and counts.max() < 200 + 6 * 13.4


def test_poisson_mean_size_matches_rate():
    n, q, rounds = 400, 0.05, 2000
    sizes = np.array(
        [len(sampling.poisson_cohort(num_clients=n, sampling_rate=q, seed=2, round_num=r)) for r in range(rounds)]
    )
    expected, sd = n * q, np.sqrt(n * q * (1 - q))
    assert abs(sizes.mean() - expected) < 5 * sd / np.sqrt(rounds)
    assert sizes.std() == pytest.approx(sd, rel=0.1)  # sizes vary: it is not a fixed-size cohort


def test_poisson_members_are_valid_and_unique():
    cohort = sampling.poisson_cohort(num_clients=300, sampling_rate=0.3, seed=5, round_num=0)
    assert len(np.unique(cohort)) == len(cohort)
    assert cohort.min() >= 0 and cohort.max() < 300
    assert len(sampling.poisson_cohort(num_clients=300, sampling_rate=0.0, seed=5, round_num=0)) == 0
    assert len(sampling.poisson_cohort(num_clients=300, sampling_rate=1.0, seed=5, round_num=0)) == 300
