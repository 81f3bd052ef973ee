"""Accuracy metrics computed the same way for every model and baseline.

Rating prediction: RMSE and MAE on the held-out ratings, predictions clipped to the rating scale.
Ranking (NCF protocol): each user's held-out positive is scored against sampled unrated
negatives (metrics averaged over the task's negative samples); HR@10 counts a hit when fewer
than 10 negatives score at least as high as the positive (ties count against the model),
NDCG@10 = 1 / log2(rank + 2) on a hit. Full catalog: the same positive ranked against every
never-interacted item, Recall@20 and NDCG@20. Which positives these are (the standard
leave-one-out protocol or not) is the split's `ranking.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tff_pipeline.data import DatasetSplit

# score_fn(users [n], items [n]) -> predicted ratings [n]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

TOP_K = 10
FULL_CATALOG_K = 20
# Full-catalog ranking scores users x items; above this many users it uses a fixed sample of them.
FULL_CATALOG_MAX_USERS = 5000
METRIC_KEYS = ("rmse", "mae", f"hr@{TOP_K}", f"ndcg@{TOP_K}", f"recall@{FULL_CATALOG_K}", f"ndcg@{FULL_CATALOG_K}")


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
    """HR@k and NDCG@k against the sampled negatives, averaged over the negative samples."""
    task = split.ranking
    num_negatives = task.num_negatives
    block_users = max(1, SCORE_BLOCK_PAIRS // (num_negatives + 1))
    hits, gains = [], []
    for negatives in task.negatives:
        ranks = []
        for start in range(0, len(task.users), block_users):
            users = task.users[start:start + block_users]
            positive_scores = score_fn(users, task.positives[start:start + block_users])
            negative_scores = score_fn(
                np.repeat(users, num_negatives), negatives[start:start + block_users].reshape(-1)
            ).reshape(-1, num_negatives)
            ranks.append(np.sum(negative_scores >= positive_scores[:, None], axis=1))
        rank = np.concatenate(ranks)
        hits.append(np.mean(rank < k))
        gains.append(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)))
    return {f"hr@{k}": float(np.mean(hits)), f"ndcg@{k}": float(np.mean(gains))}


def full_catalog_metrics(score_fn: ScoreFn, split: DatasetSplit, k: int = FULL_CATALOG_K) -> dict[str, float]:
    """Recall@k and NDCG@k of each positive ranked against every item the user never interacted
    with (sampled metrics can order models differently: Krichene & Rendle 2020). With one
    held-out positive per user, Recall@k is the hit rate at k. Ties count against the model.
    Data sets with more than FULL_CATALOG_MAX_USERS ranking users use a fixed sample of them."""
    task = split.ranking
    indptr, interacted = split.interactions
    num_items = split.num_items
    rows_used = np.arange(len(task.users))
    if len(rows_used) > FULL_CATALOG_MAX_USERS:  # a fixed sample: every model is scored on the same users
        rows_used = np.sort(np.random.default_rng(0).choice(rows_used, FULL_CATALOG_MAX_USERS, replace=False))
    all_users, all_positives = task.users[rows_used], task.positives[rows_used]
    block_users = max(1, SCORE_BLOCK_PAIRS // num_items)
    ranks = []
    for start in range(0, len(all_users), block_users):
        users = all_users[start:start + block_users]
        scores = score_fn(np.repeat(users, num_items), np.tile(np.arange(num_items), len(users)))
        scores = np.asarray(scores, np.float64).reshape(len(users), num_items)
        rows = np.arange(len(users))
        positive = scores[rows, all_positives[start:start + block_users]]
        counts = indptr[users + 1] - indptr[users]
        known_rows = np.repeat(rows, counts)
        known_items = np.concatenate([interacted[indptr[u]:indptr[u + 1]] for u in users]) if len(users) else []
        scores[known_rows, known_items] = -np.inf  # never-interacted items only (the positive too)
        ranks.append(np.sum(scores >= positive[:, None], axis=1))
    rank = np.concatenate(ranks) if ranks else np.zeros(0)
    return {f"recall@{k}": float(np.mean(rank < k)),
            f"ndcg@{k}": float(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)))}


def evaluate(
    score_fn: ScoreFn, split: DatasetSplit, *, ratings: bool = True, ranking: bool = True,
    ranking_fn: ScoreFn | None = None,
) -> dict[str, float | None]:
    """All metrics; a part that does not apply is None (e.g. RMSE of popularity). `ranking_fn`
    ranks when the model has a separate ranking score (default: `score_fn`)."""
    result: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if ratings:
        result.update(rating_metrics(score_fn, split))
    if ranking and len(split.ranking.users):
        rank_by = ranking_fn or score_fn
        result.update(ranking_metrics(rank_by, split))
        result.update(full_catalog_metrics(rank_by, split))
    return result
