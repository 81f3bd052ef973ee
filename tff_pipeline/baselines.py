"""Non-federated reference points, scored by the same evaluation code on the same split.

- global_mean: one number for everything.
- local_only: each device alone, global mean plus its own regularised user bias (the floor
  federation must beat: no collaboration on items at all).
- biases: user + item biases fitted on pooled data (alternating exact ridge steps).
- popularity: ranks items by their train rating count (ranking metrics only).
The centralized matrix factorization lives in `centralized.py`.
"""

from __future__ import annotations

import numpy as np

from tff_pipeline import evaluation
from tff_pipeline.data import DatasetSplit

BIAS_L2 = 5.0


def _user_offsets(split: DatasetSplit, residual: np.ndarray, l2: float) -> np.ndarray:
    train = split.train
    sums = np.bincount(train.users, residual, minlength=split.num_users)
    counts = np.bincount(train.users, minlength=split.num_users)
    return sums / (counts + l2)


def global_mean(split: DatasetSplit) -> dict[str, float | None]:
    mu = float(np.mean(split.train.ratings))
    return evaluation.evaluate(lambda u, i: np.full(len(u), mu), split, ranking=False)


def local_only(split: DatasetSplit) -> dict[str, float | None]:
    mu = float(np.mean(split.train.ratings))
    user_bias = _user_offsets(split, split.train.ratings - mu, BIAS_L2)
    return evaluation.evaluate(lambda u, i: mu + user_bias[u], split, ranking=False)


def fit_biases(split: DatasetSplit, *, l2: float = BIAS_L2, sweeps: int = 15):
    train = split.train
    mu = float(np.mean(train.ratings))
    user_bias = np.zeros(split.num_users)
    item_bias = np.zeros(split.num_items)
    item_counts = np.bincount(train.items, minlength=split.num_items)
    for _ in range(sweeps):
        residual = train.ratings - mu - user_bias[train.users]
        item_bias = np.bincount(train.items, residual, minlength=split.num_items) / (item_counts + l2)
        user_bias = _user_offsets(split, train.ratings - mu - item_bias[train.items], l2)
    return mu, user_bias, item_bias


def biases(split: DatasetSplit) -> dict[str, float | None]:
    mu, user_bias, item_bias = fit_biases(split)
    return evaluation.evaluate(lambda u, i: mu + user_bias[u] + item_bias[i], split)


def popularity(split: DatasetSplit) -> dict[str, float | None]:
    counts = np.bincount(split.train.items, minlength=split.num_items).astype(np.float64)
    return evaluation.evaluate(lambda u, i: counts[i], split, ratings=False)


def all_simple_baselines(split: DatasetSplit) -> dict[str, dict[str, float | None]]:
    return {
        "global_mean": global_mean(split),
        "local_only": local_only(split),
        "biases": biases(split),
        "popularity": popularity(split),
    }
