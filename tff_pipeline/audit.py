"""The privacy audit's empirical ε: one-shot canaries (Andrew, Kairouz, Oh, Oprea, McMahan,
Suriyakumar, "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024).

The ε an accountant prints is an upper bound from the plan's arithmetic; a bug that dropped the
noise would leave it unchanged. The audit measures instead, in one training run:

- `canaries` extra clients join the population. Each uploads the same random direction every time
  it is sampled (Poisson, like the users), of the clip's norm, so DP clips and noises it like any
  user. As many other random directions are drawn and never inserted.
- The directions live on the biases of `CANARY_ITEMS_PER_CANARY` x canaries extra items that no
  user rated (`with_canary_items`), where the users' own learning does not move the model: there
  the model's change is canaries plus DP noise, the regime the estimator is built for. (On the
  whole model the users' learning swamps the canaries: measured on the synthetic set, the noise
  turned off moved the estimate only from 2.0 to 2.5.)
- After training, the cosine between the model's change there and each direction: inserted
  directions align with it; never-inserted ones are near 0 (random in high dimension).
- The two sets of cosines are fitted with Gaussians; their separation mu = (mean_in - mean_out) /
  std_out is read as mu-Gaussian DP (Dong, Roth, Su), whose ε at δ is the estimate. A bootstrap
  over the canaries gives its 95% interval.

Without DP the estimate is large (the canaries stand out); with DP it should not exceed the
accountant's ε. An estimate whose interval lies above the accountant's ε is flagged: the run
leaked more than its plan allows.

A canary uploads 0 everywhere but its extra items' biases; the cosine is taken over those biases.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import optimize

from tff_pipeline.data import DatasetSplit, Vocabulary

BOOTSTRAP_SAMPLES = 300
CANARY_ITEMS_PER_CANARY = 20  # the null's spread is 1/sqrt(items), a canary's pull ~1/sqrt(canaries)
_NORMAL = NormalDist()


@dataclasses.dataclass(frozen=True)
class CanarySet:
    """Inserted canaries' uploads (K x upload length), every direction ((K + held out) x canary
    items, on those items' biases), and where the canary items start."""

    uploads: np.ndarray
    directions: np.ndarray
    inserted: int
    first_item: int


def with_canary_items(split: DatasetSplit, canaries: int) -> DatasetSplit:
    """`split` with `CANARY_ITEMS_PER_CANARY * canaries` more items that nobody rated."""
    vocab = split.vocab
    extra = CANARY_ITEMS_PER_CANARY * canaries
    first = int(np.max(vocab.item_raw_ids)) + 1 if vocab.item_raw_ids.dtype.kind in "iu" else 0
    raw = np.concatenate([vocab.item_raw_ids, np.arange(first, first + extra).astype(vocab.item_raw_ids.dtype)])
    titles = None if vocab.item_titles is None else (*vocab.item_titles, *(f"canary item {i}" for i in range(extra)))
    return dataclasses.replace(split, vocab=Vocabulary(vocab.user_raw_ids, raw, titles))


def draw_canaries(*, count: int, num_items: int, first_item: int, dim: int, ranking_head: bool, norm: float,
                  seed: int) -> CanarySet:
    """`count` inserted and `count` never-inserted random directions of L2 norm `norm` on the
    biases of items first_item..num_items - 1."""
    if count < 2:
        raise ValueError(f"the audit needs at least 2 canaries, got {count}")
    rng = np.random.default_rng([seed, 18])
    directions = rng.normal(size=(2 * count, num_items - first_item))
    directions *= norm / np.linalg.norm(directions, axis=1, keepdims=True)
    # The upload: item embeddings [N, d], item biases [N], global mean, ranking step [N, d] (if on).
    uploads = np.zeros((count, num_items * dim + num_items + 1 + (num_items * dim if ranking_head else 0)), np.float32)
    start = num_items * dim + first_item
    uploads[:, start:start + directions.shape[1]] = directions[:count]
    return CanarySet(uploads, directions, count, first_item)


def model_change(initial: Any, final: Any, first_item: int) -> np.ndarray:
    """The change of the canary items' biases."""
    return np.asarray(final[1])[first_item:] - np.asarray(initial[1])[first_item:]


def cosines(change: np.ndarray, directions: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(change))
    if norm == 0:
        return np.zeros(len(directions))
    return directions @ change / (np.linalg.norm(directions, axis=1) * norm)


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """ε at δ of mu-Gaussian DP: the ε solving delta = Phi(-ε/mu + mu/2) - e^ε Phi(-ε/mu - mu/2)."""
    if mu <= 0:
        return 0.0

    def gap(eps: float) -> float:
        return _NORMAL.cdf(-eps / mu + mu / 2) - math.exp(eps) * _NORMAL.cdf(-eps / mu - mu / 2) - delta

    if gap(0.0) <= 0:
        return 0.0
    high = 1.0
    while gap(high) > 0:
        high *= 2
        if high > 1e4:
            return math.inf
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-6))


def estimate_epsilon(inserted: np.ndarray, held_out: np.ndarray, delta: float) -> float:
    spread = float(np.std(held_out, ddof=1))
    if spread == 0:
        return math.inf if float(np.mean(inserted)) > float(np.mean(held_out)) else 0.0
    return gaussian_dp_epsilon((float(np.mean(inserted)) - float(np.mean(held_out))) / spread, delta)


def estimate_with_interval(inserted: np.ndarray, held_out: np.ndarray, delta: float,
                           seed: int) -> tuple[float, float, float]:
    """(estimate, 2.5th and 97.5th percentile of a bootstrap over the canaries)."""
    rng = np.random.default_rng([seed, 19])
    samples = [estimate_epsilon(rng.choice(inserted, inserted.size), rng.choice(held_out, held_out.size), delta)
               for _ in range(BOOTSTRAP_SAMPLES)]
    low, high = np.percentile(samples, [2.5, 97.5])
    return estimate_epsilon(inserted, held_out, delta), float(low), float(high)


def canary_audit(canaries: CanarySet, initial: Any, final: Any, *, claimed_epsilon: float | None, delta: float,
                 seed: int) -> dict[str, Any]:
    """The audit's figures for `audit.json` (and the cosines, for the plot)."""
    measured = cosines(model_change(initial, final, canaries.first_item), canaries.directions)
    inserted, held_out = measured[:canaries.inserted], measured[canaries.inserted:]
    estimate, low, high = estimate_with_interval(inserted, held_out, delta, seed)
    flagged = claimed_epsilon is not None and low > claimed_epsilon
    return {
        "epsilon": claimed_epsilon,
        "epsilon_estimate": estimate,
        "epsilon_estimate_interval": [low, high],
        "flagged": flagged,
        "delta": delta,
        "canaries": {"inserted": int(inserted.size), "held_out": int(held_out.size),
                     "cosine_inserted_mean": float(np.mean(inserted)), "cosine_held_out_mean": float(np.mean(held_out)),
                     "cosine_held_out_std": float(np.std(held_out, ddof=1))},
        "cosines": {"inserted": inserted.tolist(), "held_out": held_out.tolist()},
    }
