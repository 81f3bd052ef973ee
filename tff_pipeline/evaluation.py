"""Accuracy metrics computed the same way for every model and baseline.

Rating prediction: RMSE and MAE on the held-out ratings, predictions clipped to the rating scale.
Ranking (NCF protocol): each user's held-out positive is scored against sampled unrated
negatives; HR@10 counts a hit when fewer than 10 negatives score at least as high as the
positive (ties count against the model), NDCG@10 = 1 / log2(rank + 2) on a hit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tff_pipeline.data import DatasetSplit

# score_fn(users [n], items [n]) -> predicted ratings [n]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

TOP_K = 10


def rating_metrics(score_fn: ScoreFn, split: DatasetSplit) -> dict[str, float]:
    test = split.test
    low, high = split.rating_scale
    predictions = np.clip(score_fn(test.users, test.items), low, high)
    errors = predictions - test.ratings
    return {"rmse": float(np.sqrt(np.mean(errors**2))), "mae": float(np.mean(np.abs(errors)))}


def ranking_metrics(score_fn: ScoreFn, split: DatasetSplit, k: int = TOP_K) -> dict[str, float]:
    task = split.ranking
    num_negatives = task.negatives.shape[1]
    positive_scores = score_fn(task.users, task.positives)
    negative_scores = score_fn(
        np.repeat(task.users, num_negatives), task.negatives.reshape(-1)
    ).reshape(-1, num_negatives)
    rank = np.sum(negative_scores >= positive_scores[:, None], axis=1)
    hits = rank < k
    ndcg = np.where(hits, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hr@{k}": float(np.mean(hits)), f"ndcg@{k}": float(np.mean(ndcg))}


def evaluate(
    score_fn: ScoreFn, split: DatasetSplit, *, ratings: bool = True, ranking: bool = True
) -> dict[str, float | None]:
    """All four metrics; a part that does not apply is None (e.g. RMSE of popularity)."""
    result: dict[str, float | None] = {"rmse": None, "mae": None, "hr@10": None, "ndcg@10": None}
    if ratings:
        result.update(rating_metrics(score_fn, split))
    if ranking and len(split.ranking.users):
        result.update(ranking_metrics(score_fn, split))
    return result
