"""Centralized reference: the same model trained on pooled ratings (alternating least squares).

This is what federation is measured against: the same parameters, the same prediction formula,
the same user ridge fit (`model.fit_users_batched`), but the item side is solved exactly with all
ratings in one place. One epoch = one sweep (all item rows, then all user rows). The global
mean is the pooled train mean.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from tff_pipeline import model
from tff_pipeline.data import DatasetSplit


@dataclasses.dataclass(frozen=True)
class CentralizedResult:
    params: model.GlobalParams
    epoch_seconds: list[float]


def fit_items_batched(
    params: model.GlobalParams,
    users: model.UserParams,
    user_ids: tf.Tensor,
    item_ids: tf.Tensor,
    ratings: tf.Tensor,
    num_items: int,
    item_l2: float,
    item_bias_l2: float,
    config: model.ModelConfig,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact ridge solve of every item's (embedding, bias) with the users frozen."""
    dim = int(users.embedding.shape[1])

    def chunk(start: int, end: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        rows = user_ids[start:end]
        vectors = tf.gather(users.embedding, rows)
        design = tf.concat([vectors, tf.ones_like(rows, tf.float32)[:, tf.newaxis]], axis=1)
        return design, ratings[start:end] - params.global_mean - tf.gather(users.bias, rows), item_ids[start:end]

    gram, rhs = model.accumulate_normal_equations(int(ratings.shape[0]), chunk, num_items, dim + 1)
    gram = gram + tf.linalg.diag(tf.constant([item_l2] * dim + [item_bias_l2], tf.float32))
    solution = model.solve_ridge_system(gram, rhs, config)
    return solution[:, :dim], solution[:, dim]


def train_centralized(
    split: DatasetSplit,
    config: model.ModelConfig,
    *,
    epochs: int = 15,
    item_l2: float = 5.0,
    seed: int = 0,
) -> CentralizedResult:
    train = split.train
    user_ids = tf.constant(train.users)
    item_ids = tf.constant(train.items)
    ratings = tf.constant(train.ratings)
    initial = model.initial_global_params(config, seed=seed)
    params = initial._replace(global_mean=tf.constant(float(np.mean(train.ratings)), tf.float32))

    @tf.function
    def sweep(item_embeddings, item_bias, global_mean):
        current = model.GlobalParams(item_embeddings, item_bias, global_mean)
        users = model.fit_users_batched(current, user_ids, item_ids, ratings, split.num_users, config)
        vectors, biases = fit_items_batched(
            current, users, user_ids, item_ids, ratings, split.num_items, item_l2, item_l2, config
        )
        return vectors, biases

    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        vectors, biases = sweep(*params)
        params = model.GlobalParams(vectors, biases, params.global_mean)
        _ = vectors.numpy()
        epoch_seconds.append(time.perf_counter() - start)
    return CentralizedResult(params=params, epoch_seconds=epoch_seconds)
