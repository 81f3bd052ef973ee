"""Centralized implicit-feedback rankers in numpy, the field's usual references for the ranking
task (they see every user's interactions in one place, so they bound what federation can reach):

- iALS: weighted implicit least squares by alternating exact solves (Hu, Koren, Volinsky 2008),
  the objective of this project's ranking head without the rating head or federation.
- BPR-MF: Bayesian personalized ranking with SGD on (user, rated item, sampled unrated item)
  triples (Rendle et al. 2009).

Both treat every train rating as an interaction (the stars are ignored) and are scored with the
same evaluation code as every other model. Their hyperparameters were chosen on the loo-val
split (the figures are beside each config).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tff_pipeline import evaluation
from tff_pipeline.data import DatasetSplit


@dataclasses.dataclass(frozen=True)
class IalsConfig:
    # loo-val HR@10 at d=16, l2 3: w0 0.03 -> 0.680, 0.1 -> 0.697, 0.3 -> 0.700; l2 10 -> 0.648.
    dim: int = 16
    unobserved_weight: float = 0.3
    l2: float = 3.0
    epochs: int = 15
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class BprConfig:
    # loo-val HR@10: these 0.683; lr 0.1 0.673; l2 0.02 0.682; 120 epochs 0.676.
    dim: int = 16
    learning_rate: float = 0.05
    l2: float = 0.005
    epochs: int = 60
    batch: int = 256
    seed: int = 0


def _interactions(split: DatasetSplit) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of the train interactions, each pair once."""
    pairs = np.unique(np.stack([split.train.users, split.train.items], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _implicit_solve(fixed: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int,
                    unobserved_weight: float, l2: float) -> np.ndarray:
    """For every row r: argmin_v sum_{c in cols(r)} (1 - <v, fixed_c>)^2 + w0 sum_all <v, fixed_c>^2 + l2 |v|^2."""
    dim = fixed.shape[1]
    gram = np.zeros((count, dim, dim))
    rhs = np.zeros((count, dim))
    np.add.at(gram, rows, fixed[cols][:, :, None] * fixed[cols][:, None, :])
    np.add.at(rhs, rows, fixed[cols])
    gram += unobserved_weight * fixed.T @ fixed + l2 * np.eye(dim)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def train_ials(split: DatasetSplit, config: IalsConfig = IalsConfig()) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors of iALS, [num_users, dim] and [num_items, dim]."""
    users, items = _interactions(split)
    rng = np.random.default_rng(config.seed)
    item_factors = rng.normal(0.0, 0.1, (split.num_items, config.dim))
    user_factors = np.zeros((split.num_users, config.dim))
    for _ in range(config.epochs):
        user_factors = _implicit_solve(item_factors, users, items, split.num_users, config.unobserved_weight, config.l2)
        item_factors = _implicit_solve(user_factors, items, users, split.num_items, config.unobserved_weight, config.l2)
    return user_factors, item_factors


def _sample_unrated(rng: np.random.Generator, users: np.ndarray, rated_keys: np.ndarray, num_items: int) -> np.ndarray:
    """One uniformly drawn item per user that the user did not rate (rejection sampling)."""
    negatives = rng.integers(0, num_items, len(users))
    while True:
        keys = users * num_items + negatives
        position = np.minimum(np.searchsorted(rated_keys, keys), len(rated_keys) - 1)
        clash = rated_keys[position] == keys
        if not clash.any():
            return negatives
        negatives[clash] = rng.integers(0, num_items, int(clash.sum()))


def train_bpr(split: DatasetSplit, config: BprConfig = BprConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User factors, item factors and item biases of BPR-MF (minibatch SGD; one unrated item is
    sampled per (user, rated item) pair each epoch)."""
    users, items = _interactions(split)
    rng = np.random.default_rng(config.seed)
    user_factors = rng.normal(0.0, 0.1, (split.num_users, config.dim))
    item_factors = rng.normal(0.0, 0.1, (split.num_items, config.dim))
    item_bias = np.zeros(split.num_items)
    rated_keys = users * split.num_items + items  # sorted: _interactions returns sorted pairs
    for _ in range(config.epochs):
        order = rng.permutation(len(users))
        negatives = _sample_unrated(rng, users[order], rated_keys, split.num_items)
        for start in range(0, len(order), config.batch):
            rows = order[start:start + config.batch]
            u, i, j = users[rows], items[rows], negatives[start:start + config.batch]
            pu, qi, qj = user_factors[u], item_factors[i], item_factors[j]
            margin = np.sum(pu * (qi - qj), axis=1) + item_bias[i] - item_bias[j]
            weight = 1.0 / (1.0 + np.exp(np.clip(margin, -30, 30)))  # d/dmargin of -log sigmoid(margin)
            lr = config.learning_rate
            np.add.at(user_factors, u, lr * (weight[:, None] * (qi - qj) - config.l2 * pu))
            np.add.at(item_factors, i, lr * (weight[:, None] * pu - config.l2 * qi))
            np.add.at(item_factors, j, lr * (-weight[:, None] * pu - config.l2 * qj))
            np.add.at(item_bias, i, lr * (weight - config.l2 * item_bias[i]))
            np.add.at(item_bias, j, lr * (-weight - config.l2 * item_bias[j]))
    return user_factors, item_factors, item_bias


def ials(split: DatasetSplit, config: IalsConfig = IalsConfig()) -> dict[str, float | None]:
    user_factors, item_factors = train_ials(split, config)
    return evaluation.evaluate(lambda u, i: np.sum(user_factors[u] * item_factors[i], axis=1), split, ratings=False)


def bpr(split: DatasetSplit, config: BprConfig = BprConfig()) -> dict[str, float | None]:
    user_factors, item_factors, item_bias = train_bpr(split, config)
    return evaluation.evaluate(
        lambda u, i: np.sum(user_factors[u] * item_factors[i], axis=1) + item_bias[i], split, ratings=False
    )
