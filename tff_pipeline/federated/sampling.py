"""Cohort sampling, seeded per round so that a resumed run samples exactly what the
uninterrupted run would have.

Private runs use Poisson sampling (each user joins independently with probability q), the
sampling the privacy accountant assumes; non-private runs draw a fixed-size uniform cohort.
"""

from __future__ import annotations

import numpy as np


def round_rng(seed: int, round_num: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_num])


def poisson_cohort(*, num_clients: int, sampling_rate: float, seed: int, round_num: int) -> np.ndarray:
    mask = round_rng(seed, round_num).random(num_clients) < sampling_rate
    return np.flatnonzero(mask)


def uniform_cohort(*, num_clients: int, cohort_size: int, seed: int, round_num: int) -> np.ndarray:
    size = min(cohort_size, num_clients)
    return np.sort(round_rng(seed, round_num).choice(num_clients, size=size, replace=False))
