"""Splitting, negative sampling and client grouping on small hand-built tables."""

from __future__ import annotations

import numpy as np
import pytest

from tff_pipeline.data import (
    DataError,
    Ratings,
    group_by_user,
    leave_latest_out,
    per_user_random_split,
    sample_negatives,
)


def make_ratings(counts: list[int], num_items: int = 50, seed: int = 0) -> Ratings:
    """Users with the given row counts; distinct items per user; shuffled rows."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(counts)), counts)
    items = np.concatenate([rng.choice(num_items, c, replace=False) for c in counts])
    order = rng.permutation(len(users))
    return Ratings(
        users=users[order],
        items=items[order],
        ratings=rng.integers(1, 6, len(users))[order],
        timestamps=rng.integers(0, 5, len(users))[order],  # many ties on purpose
    )


def test_random_split_counts_per_user() -> None:
    counts = [1, 2, 3, 5, 10, 11, 40]
    ratings = make_ratings(counts)
    train, test = per_user_random_split(ratings, test_fraction=0.2, seed=1)
    assert len(train) + len(test) == len(ratings)
    test_counts = np.bincount(test.users, minlength=len(counts)).tolist()
    train_counts = np.bincount(train.users, minlength=len(counts)).tolist()
    assert test_counts == [0, 1, 1, 1, 2, 2, 8]
    assert all(c >= 1 for c in train_counts)
    train_pairs = set(zip(train.users.tolist(), train.items.tolist()))
    assert not train_pairs & set(zip(test.users.tolist(), test.items.tolist()))


def test_random_split_deterministic_per_seed() -> None:
    ratings = make_ratings([20] * 10)
    a = per_user_random_split(ratings, seed=5)[1]
    b = per_user_random_split(ratings, seed=5)[1]
    c = per_user_random_split(ratings, seed=6)[1]
    assert np.array_equal(a.items, b.items) and np.array_equal(a.users, b.users)
    assert not np.array_equal(a.items, c.items)


def test_leave_latest_out_ties_go_to_later_row() -> None:
    ratings = Ratings(
        users=[0, 0, 0, 1, 2, 2],
        items=[1, 2, 3, 4, 5, 6],
        ratings=[3, 4, 5, 1, 2, 2],
        timestamps=[10, 30, 30, 7, 5, 4],
    )
    train, test = leave_latest_out(ratings)
    assert test.users.tolist() == [0, 2]
    assert test.items.tolist() == [3, 5]  # row 2 beats row 1 on the tie; user 1 keeps its only row
    assert train.items.tolist() == [1, 2, 4, 6]


def test_sample_negatives_excludes_rated() -> None:
    ratings = make_ratings([5, 30, 45], num_items=50)
    users = np.array([2, 0, 1])
    negs = sample_negatives(ratings, users, 50, num_negatives=5, seed=0)
    assert negs.shape == (3, 5) and negs.dtype == np.int32
    rated = set(zip(ratings.users.tolist(), ratings.items.tolist()))
    for user, row in zip(users.tolist(), negs):
        assert len(set(row.tolist())) == 5
        assert not any((user, int(i)) in rated for i in row)
    again = sample_negatives(ratings, users, 50, num_negatives=5, seed=0)
    assert np.array_equal(negs, again)
    with pytest.raises(DataError, match="user index 2 has only 5 unrated"):
        sample_negatives(ratings, users, 50, num_negatives=6, seed=0)


def test_group_by_user_round_trips() -> None:
    ratings = make_ratings([3, 0, 7, 1])
    groups = group_by_user(ratings, num_users=6)
    assert len(groups) == 6
    assert [len(items) for items, _ in groups] == [3, 0, 7, 1, 0, 0]
    for user, (items, values) in enumerate(groups):
        assert items.dtype == np.int32 and values.dtype == np.float32
        mask = ratings.users == user
        assert items.tolist() == ratings.items[mask].tolist()
        assert values.tolist() == ratings.ratings[mask].tolist()
    with pytest.raises(DataError):
        group_by_user(ratings, num_users=3)


def test_ratings_select_and_validation() -> None:
    ratings = make_ratings([2, 3])
    assert len(ratings.select(ratings.users == 1)) == 3
    assert len(ratings.select(np.array([0, 4]))) == 2
    with pytest.raises(ValueError):
        Ratings(users=[0, 1], items=[0], ratings=[1.0], timestamps=[0])
