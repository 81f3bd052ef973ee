"""FedRecon evaluation of a global model: each user first fits their own parameters on their
train ratings (on the device, in deployment), then predicts their held-out items."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_pipeline import evaluation, model
from tff_pipeline.data import DatasetSplit


def fitted_score_fn(
    params: model.GlobalParams, split: DatasetSplit, config: model.ModelConfig
) -> evaluation.ScoreFn:
    """Score function of the global model with every user's local parameters fitted."""
    train = split.train
    users = model.fit_users_batched(
        params,
        tf.constant(train.users),
        tf.constant(train.items),
        tf.constant(train.ratings),
        split.num_users,
        config,
    )
    user_embeddings = users.embedding.numpy()
    user_bias = users.bias.numpy()
    item_embeddings = np.asarray(params.item_embeddings)
    item_bias = np.asarray(params.item_bias)
    global_mean = float(params.global_mean)

    def score(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        interaction = np.sum(user_embeddings[user_ids] * item_embeddings[item_ids], axis=1)
        return global_mean + user_bias[user_ids] + item_bias[item_ids] + interaction

    return score


def fitted_ranking_fn(
    params: model.GlobalParams, split: DatasetSplit, config: model.ModelConfig
) -> evaluation.ScoreFn:
    """Ranking scores <x_u, v_j> of the implicit head, every user's x_u fitted on the items of
    their train ratings (what the device does before it recommends)."""
    train = split.train
    implicit = model.fit_implicit_users_batched(
        params, tf.constant(train.users), tf.constant(train.items), split.num_users, config
    ).numpy()
    item_embeddings = np.asarray(params.item_embeddings)

    def score(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        return np.sum(implicit[user_ids] * item_embeddings[item_ids], axis=1)

    return score


def evaluate_global_model(
    params: model.GlobalParams, split: DatasetSplit, config: model.ModelConfig
) -> dict[str, float | None]:
    """Rating metrics from the rating head; ranking metrics from the ranking head when the model
    has one (else from predicted stars)."""
    rating = fitted_score_fn(params, split, config)
    ranking = fitted_ranking_fn(params, split, config) if config.implicit else rating
    return evaluation.evaluate(rating, split, ranking_fn=ranking)
