"""Train/test splitting and NCF-style negative sampling.

All functions are seeded and vectorised where it matters so that every run of
an experiment sees exactly the same split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .types import DatasetSplit, RankingTask, Ratings, Vocabulary

__all__ = [
    "per_user_random_split",
    "leave_latest_out",
    "leave_two_latest_out",
    "latest_per_user",
    "sample_negatives",
    "ranking_task",
    "split_all_ratings",
    "GENERIC_SPLITS",
    "TooFewUnratedItems",
]

GENERIC_SPLITS = ("random", "loo", "loo-val")
NEGATIVE_SEEDS = 3  # ranking metrics are averaged over this many samples of negatives
LOO_PROTOCOL = ("leave-one-out: each user's latest interaction ranked against 99 never-interacted items "
                "(3 negative samples) and against the whole catalog")
LOO_VALIDATION_PROTOCOL = ("leave-one-out validation: each user's second-latest interaction (the latest is "
                           "set aside for the test); for choosing hyperparameters")


class TooFewUnratedItems(DataError):
    """A user has rated nearly every item, leaving too few to sample ranking negatives from."""

    def __init__(self, user_index: int, unrated: int, needed: int) -> None:
        self.user_index, self.unrated, self.needed = user_index, unrated, needed
        super().__init__(f"user index {user_index} has only {unrated} unrated items, fewer than the {needed} "
                         "negatives the ranking evaluation samples")

    def for_user(self, raw_user_id: object, path: str | Path | None) -> DataError:
        """The same refusal, naming the user's own id and the data file."""
        return DataError(f"user {raw_user_id} has rated all but {self.unrated} items, fewer than the {self.needed} "
                         "unrated items the ranking evaluation samples as negatives; the catalog is too small "
                         "for it", path=path)


def _rank_within_user(users: np.ndarray, keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """0-based rank of each row among its user's rows, ordered by ``keys``.

    ``keys`` follow np.lexsort convention (last key is the primary sort key
    after the user).
    """
    order = np.lexsort((*keys, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - group_start
    return ranks


def _time_rank_from_latest(ratings: Ratings) -> np.ndarray:
    """Rank 0 = user's latest row (timestamp, ties -> larger row index)."""
    rows = np.arange(len(ratings))
    # Reverse the order so the latest row sorts first within each user; bitwise NOT (~t = -t - 1)
    # reverses int64 order without overflow, where -t wraps at -2^63.
    return _rank_within_user(ratings.users.astype(np.int64), (-rows, ~ratings.timestamps))


def latest_per_user(ratings: Ratings) -> np.ndarray:
    """Row index of each user's latest rating, in ascending user order."""
    if len(ratings) == 0:
        return np.zeros(0, dtype=np.int64)
    latest = np.flatnonzero(_time_rank_from_latest(ratings) == 0)
    return latest[np.argsort(ratings.users[latest], kind="stable")]


def per_user_random_split(
    ratings: Ratings, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Ratings, Ratings]:
    """Per-user random holdout so every user appears in train (no cold start).

    Users with n >= 2 ratings get max(1, round(test_fraction * n)) test rows,
    capped at n - 1; users with a single rating keep it in train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(ratings) == 0:
        return ratings, ratings
    rng = np.random.default_rng(seed)
    users = ratings.users.astype(np.int64)
    counts = np.bincount(users)
    n = counts[users]
    n_test = np.maximum(1, np.floor(test_fraction * n + 0.5)).astype(np.int64)
    n_test = np.minimum(n_test, n - 1)
    rank = _rank_within_user(users, (rng.random(len(ratings)),))
    is_test = rank < n_test
    return ratings.select(~is_test), ratings.select(is_test)


def leave_latest_out(ratings: Ratings) -> tuple[Ratings, Ratings]:
    """Time-ordered leave-one-out: each user's latest rating becomes test.

    Ties on timestamp go to the larger row index; users with a single rating
    keep it in train.
    """
    if len(ratings) == 0:
        return ratings, ratings
    counts = np.bincount(ratings.users)
    is_test = (_time_rank_from_latest(ratings) == 0) & (counts[ratings.users] >= 2)
    return ratings.select(~is_test), ratings.select(is_test)


def _rated_items_by_user(ratings: Ratings, num_users: int) -> list[np.ndarray]:
    """Item indices rated by each dense user."""
    order = np.argsort(ratings.users, kind="stable")
    counts = np.bincount(ratings.users, minlength=num_users)
    return np.split(ratings.items[order], np.cumsum(counts)[:-1])


def sample_negatives(
    all_ratings: Ratings,
    users: np.ndarray,
    num_items: int,
    *,
    num_negatives: int,
    seed: int,
) -> np.ndarray:
    """[len(users), num_negatives] items each user never rated, no repeats per row.

    ``all_ratings`` must hold every known interaction (train and test) so a
    sampled negative can never be a hidden positive.
    """
    if num_negatives < 0:
        raise DataError(f"num_negatives must be >= 0, got {num_negatives}")
    users = np.asarray(users, dtype=np.int64)
    num_users = int(max(users.max(initial=-1), all_ratings.users.max(initial=-1))) + 1
    rated = _rated_items_by_user(all_ratings, num_users)
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), num_negatives), dtype=np.int32)
    unrated = np.ones(num_items, dtype=bool)
    for row, user in enumerate(users):
        seen = rated[user]
        unrated[seen] = False
        candidates = np.flatnonzero(unrated)
        unrated[seen] = True
        if len(candidates) < num_negatives:
            raise TooFewUnratedItems(int(user), len(candidates), num_negatives)
        out[row] = rng.choice(candidates, size=num_negatives, replace=False)
    return out


def ranking_task(
    test: Ratings,
    all_ratings: Ratings,
    num_items: int,
    *,
    num_negatives: int,
    seed: int,
    protocol: str,
    num_seeds: int = NEGATIVE_SEEDS,
) -> RankingTask:
    """Positive = each test user's latest test rating; negatives from all data, one sample per
    negative seed (seed, seed + 1, ...)."""
    latest = latest_per_user(test)
    users = test.users[latest]
    negatives = np.stack([
        sample_negatives(all_ratings, users, num_items, num_negatives=num_negatives, seed=seed + k)
        for k in range(num_seeds)
    ]) if len(users) else np.zeros((num_seeds, 0, num_negatives), np.int32)
    return RankingTask(users=users, positives=test.items[latest], negatives=negatives, protocol=protocol)


def leave_two_latest_out(ratings: Ratings) -> tuple[Ratings, Ratings]:
    """Validation split of leave-one-out: drop each user's latest rating (the test item), then
    hold out the latest of the rest."""
    without_test, _ = leave_latest_out(ratings)
    return leave_latest_out(without_test)


def split_all_ratings(
    name: str,
    vocab: Vocabulary,
    ratings: Ratings,
    *,
    split: str,
    seed: int,
    num_negatives: int,
    rating_scale: tuple[float, float],
    source: str | Path | None = None,
) -> DatasetSplit:
    """Build a DatasetSplit from one full table using a generic split scheme (`source`: the data
    file, named in errors)."""
    if split == "random":
        train, test = per_user_random_split(ratings, seed=seed)
        protocol = ("not the standard protocol: each user's latest rating of a random 80/20 split, ranked "
                    "against 99 never-interacted items")
    elif split == "loo":
        train, test = leave_latest_out(ratings)
        protocol = LOO_PROTOCOL
    elif split == "loo-val":
        train, test = leave_two_latest_out(ratings)
        protocol = LOO_VALIDATION_PROTOCOL
    else:
        raise DataError(
            f"unknown split {split!r} for {name}; expected one of {GENERIC_SPLITS}"
        )
    try:
        ranking = ranking_task(test, ratings, vocab.num_items, num_negatives=num_negatives, seed=seed,
                               protocol=protocol)
    except TooFewUnratedItems as error:
        raise error.for_user(vocab.user_raw_ids[error.user_index], source) from None
    return DatasetSplit(
        name=f"{name}/{split}",
        vocab=vocab,
        train=train,
        test=test,
        ranking=ranking,
        rating_scale=rating_scale,
    )
