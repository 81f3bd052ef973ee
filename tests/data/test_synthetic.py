"""Synthetic generator: determinism, realism properties, and split validity."""

from __future__ import annotations

import numpy as np
import pytest

from tff_pipeline.data import (
    DataError,
    generate_synthetic,
    group_by_user,
    load_dataset,
    synthetic_split,
)


def test_deterministic_per_seed_and_differs_across_seeds() -> None:
    a, vocab = generate_synthetic(seed=7)
    b, _ = generate_synthetic(seed=7)
    c, _ = generate_synthetic(seed=8)
    for col in ("users", "items", "ratings", "timestamps"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
    assert len(a) != len(c) or not np.array_equal(a.items, c.items)
    assert vocab.num_users == 400 and vocab.num_items == 300
    assert vocab.item_titles[3] == "Synthetic item 3"


def test_realistic_shape() -> None:
    ratings, vocab = generate_synthetic(seed=0)
    assert set(np.unique(ratings.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.0 < ratings.ratings.mean() < 4.3
    per_item = np.sort(np.bincount(ratings.items, minlength=vocab.num_items))[::-1]
    top = per_item[: vocab.num_items // 10].sum()
    assert top / per_item.sum() > 0.25
    per_user = np.bincount(ratings.users, minlength=vocab.num_users)
    assert per_user.min() >= 10
    assert per_user.max() > 2 * np.median(per_user)  # unbalanced clients
    pairs = set(zip(ratings.users.tolist(), ratings.items.tolist()))
    assert len(pairs) == len(ratings)


def test_group_by_user_counts() -> None:
    ratings, vocab = generate_synthetic(num_users=50, num_items=80, seed=2)
    groups = group_by_user(ratings, vocab.num_users)
    assert [len(i) for i, _ in groups] == np.bincount(ratings.users, minlength=50).tolist()
    assert sum(len(r) for _, r in groups) == len(ratings)


@pytest.mark.parametrize("split", ["random", "loo"])
def test_split_is_valid(split: str) -> None:
    ds = synthetic_split(seed=1, split=split, num_users=60, num_items=200)
    assert ds.name == f"synthetic/{split}"
    train_pairs = set(zip(ds.train.users.tolist(), ds.train.items.tolist()))
    test_pairs = set(zip(ds.test.users.tolist(), ds.test.items.tolist()))
    assert not train_pairs & test_pairs
    all_pairs = train_pairs | test_pairs
    assert len(ds.ranking) == 60
    for user, pos, negs in zip(np.tile(ds.ranking.users, 3), np.tile(ds.ranking.positives, 3),
                               ds.ranking.negatives.reshape(-1, ds.ranking.num_negatives)):
        assert (user, pos) in test_pairs
        assert len(set(negs.tolist())) == 99
        assert not any((int(user), int(n)) in all_pairs for n in negs)


def test_small_catalogue_needs_fewer_negatives() -> None:
    ds = synthetic_split(num_users=20, num_items=30, num_negatives=10)
    assert ds.ranking.negatives.shape == (3, 20, 10)
    with pytest.raises(DataError, match="unrated items the ranking evaluation samples as negatives"):
        synthetic_split(num_users=20, num_items=30)


def test_load_dataset_synthetic_and_errors() -> None:
    ds = load_dataset("synthetic", seed=3, num_negatives=5)
    assert ds.name == "synthetic/random" and ds.rating_scale == (1.0, 5.0)
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("synthetic", split="u1")
    with pytest.raises(DataError, match="num_items"):
        generate_synthetic(num_items=1)


def test_the_population_scales_with_the_same_generator() -> None:
    """`--synthetic-users N`: N users from the same world (items, clusters, rating counts per user)."""
    small = load_dataset("synthetic", seed=3)
    large = load_dataset("synthetic", seed=3, synthetic_users=2000)
    assert small.num_users == 400 and large.num_users == 2000
    assert small.num_items == large.num_items == 300
    per_user = [len(s.train.ratings) / s.num_users for s in (small, large)]
    assert abs(per_user[0] - per_user[1]) / per_user[0] < 0.15


def test_synthetic_users_in_the_config() -> None:
    from tff_pipeline.config import ConfigError, SimulationConfig

    assert "synthetic_users" not in SimulationConfig().to_dict()  # configurations from before keep their digest
    sized = SimulationConfig(synthetic_users=100_000)
    assert SimulationConfig.from_dict(sized.to_dict()) == sized
    for bad in (1, 0, -5, True, 1.5, 10**8):
        with pytest.raises(ConfigError, match="synthetic_users"):
            SimulationConfig(synthetic_users=bad)
    with pytest.raises(ConfigError, match="synthetic data set only"):
        SimulationConfig(dataset="ml-100k", data_dir="x", synthetic_users=1000)
