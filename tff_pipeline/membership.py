"""User-level membership inference on the released model: did this user take part in training?

The audit (`fedrec audit`) holds a random `HOLDOUT_FRACTION` of the users out of training (the
non-members); everyone else trains (the members). The attacker knows a target user's ratings and
the released shared parameters (item embeddings, item biases, global mean), not the user's own
parameters, which never leave the device. So, like the device itself, the attacker refits the
user's embedding and bias on those ratings (`personalized_eval.fitted_score_fn`, the exact ridge
fit) and takes the user's mean squared error as the score: the item parameters were shaped by the
members' ratings, so members fit better (Yeom et al.'s loss-threshold attack, per user instead of
per example).

Reported: the attack's ROC AUC (0.5 = no better than a coin) and its advantage, max over thresholds
of TPR - FPR (under (ε, δ)-DP it is at most (e^ε - 1 + 2δ) / (e^ε + 1)). tensorflow_privacy's
membership-inference tools would compute the same two numbers, but its 0.9.0 wheel does not ship
them (`tensorflow_privacy.privacy.membership_inference_attack` imports `privacy_tests`, which is not
in the wheel), so scikit-learn's ROC does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sklearn import metrics

from tff_pipeline.data import DatasetSplit, RankingTask

HOLDOUT_FRACTION = 0.2


def hold_out_users(split: DatasetSplit, *, fraction: float = HOLDOUT_FRACTION,
                   seed: int) -> tuple[DatasetSplit, np.ndarray]:
    """(`split` without a random `fraction` of its training users, those users' indices).

    The held-out users vanish from train, test and the ranking task; the vocabulary is kept, so
    the model's shapes do not change."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    users = np.unique(split.train.users)
    count = int(round(fraction * users.size))
    if count < 1 or count >= users.size:
        raise ValueError(f"{users.size} users cannot be split into members and {fraction:.0%} non-members")
    held_out = np.sort(np.random.default_rng([seed, 20]).choice(users, count, replace=False))
    ranking = split.ranking
    keep = ~np.isin(ranking.users, held_out)
    members_split = dataclasses.replace(
        split,
        train=split.train.select(~np.isin(split.train.users, held_out)),
        test=split.test.select(~np.isin(split.test.users, held_out)),
        ranking=RankingTask(ranking.users[keep], ranking.positives[keep], ranking.negatives[:, keep],
                            ranking.protocol))
    return members_split, held_out


def per_user_loss(score_fn: Any, split: DatasetSplit) -> np.ndarray:
    """Each user's mean squared error on their training ratings ([num_users]; NaN for no ratings)."""
    train = split.train
    errors = np.square(np.asarray(score_fn(train.users, train.items), np.float64) - train.ratings)
    counts = np.bincount(train.users, minlength=split.num_users)
    totals = np.bincount(train.users, weights=errors, minlength=split.num_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def advantage_bound(epsilon: float | None, delta: float) -> float:
    """The most any membership test can gain, TPR - FPR, under (ε, δ)-DP (1 without DP)."""
    if epsilon is None or math.isinf(epsilon):
        return 1.0
    return min(1.0, (math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC from so many positives and negatives:
    with 80 held-out users an AUC of 0.55 is within two of them of a coin."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives)
    return math.sqrt(max(variance, 0.0))


def loss_threshold_attack(losses: np.ndarray, held_out: np.ndarray, *, epsilon: float | None,
                          delta: float) -> dict[str, Any]:
    """AUC and advantage of telling members (lower loss) from the held-out users."""
    rated = ~np.isnan(losses)
    is_member = np.ones(losses.size, bool)
    is_member[held_out] = False
    labels, scores = is_member[rated], -losses[rated]
    if labels.all() or not labels.any():
        raise ValueError("the attack needs both members and held-out users with ratings")
    false_positive, true_positive, _ = metrics.roc_curve(labels, scores)
    auc = float(metrics.roc_auc_score(labels, scores))
    return {
        "attack": "loss threshold on the user's refitted mean squared error",
        "auc": auc,
        "auc_standard_error": auc_standard_error(auc, int(labels.sum()), int((~labels).sum())),
        "advantage": float(np.max(true_positive - false_positive)),
        "advantage_bound": advantage_bound(epsilon, delta),
        "members": int(labels.sum()),
        "non_members": int((~labels).sum()),
        "member_loss_mean": float(np.mean(losses[rated & is_member])),
        "non_member_loss_mean": float(np.mean(losses[rated & ~is_member])),
    }
