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


# Scores are computed in blocks of this many (user, item) pairs: score functions gather a
# [pairs, dim] block of each factor table, and a large data set's ranking task has ~10 M pairs.
SCORE_BLOCK_PAIRS = 2**18


def rating_metrics(score_fn: ScoreFn, split: DatasetSplit) -> dict[str, float]:
    test = split.test
    low, high = split.rating_scale
    squared, absolute = 0.0, 0.0
    for start in range(0, len(test), SCORE_BLOCK_PAIRS):
        rows = slice(start, start + SCORE_BLOCK_PAIRS)
        errors = np.clip(score_fn(test.users[rows], test.items[rows]), low, high) - test.ratings[rows]
        squared += float(np.sum(np.square(errors, dtype=np.float64)))
        absolute += float(np.sum(np.abs(errors), dtype=np.float64))
    count = max(len(test), 1)
    return {"rmse": float(np.sqrt(squared / count)), "mae": absolute / count}


def ranking_metrics(score_fn: ScoreFn, split: DatasetSplit, k: int = TOP_K) -> dict[str, float]:
    task = split.ranking
    num_negatives = task.negatives.shape[1]
    block_users = max(1, SCORE_BLOCK_PAIRS // (num_negatives + 1))
    ranks = []
    for start in range(0, len(task.users), block_users):
        users = task.users[start:start + block_users]
        positive_scores = score_fn(users, task.positives[start:start + block_users])
        negative_scores = score_fn(
            np.repeat(users, num_negatives), task.negatives[start:start + block_users].reshape(-1)
        ).reshape(-1, num_negatives)
        ranks.append(np.sum(negative_scores >= positive_scores[:, None], axis=1))
    rank = np.concatenate(ranks)
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
