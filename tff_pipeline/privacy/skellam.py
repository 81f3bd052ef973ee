"""ε of distributed DP's Skellam mechanism, Poisson-sampled and composed over rounds (RDP).

dp-accounting has no Skellam event (TFF's `DistributedSkellamSumQuery` reports an
`UnsupportedDpEvent`; exact accounting is a TODO in TFF's own source), so the bound is written
here from its paper and composed the RDP way:

- One release (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
  Learning", NeurIPS 2021, Theorem 3.5): adding i.i.d. Skellam noise of variance mu to an integer
  vector with L1 and L2 sensitivities D1 and D2 is (alpha, eps(alpha))-RDP for integer alpha > 1 with
  eps(alpha) <= alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu)).
  The first term is the Gaussian mechanism's; the second is the price of integers.
- Poisson sampling at rate q: the general upper bound of Zhu and Wang ("Poisson Subsampled Rényi
  Differential Privacy", ICML 2019, Theorem 6) for integer orders, never above the unsampled bound.
- Rounds add their RDP curves; the conversion to (ε, δ) is dp-accounting's (`compute_epsilon`).

tests/test_skellam_accounting.py checks this against independent computations: the exact Rényi
divergence of one-dimensional Skellam distributions summed numerically, dp-accounting's PLD of
the same (sampled, composed) mechanism, and the Gaussian limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attr
import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special

from tff_pipeline.privacy.errors import PrivacyError

ORDERS: tuple[int, ...] = tuple(range(2, 129)) + (160, 192, 256, 384, 512)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SkellamDpEvent(dp_accounting.DpEvent):
    """One release of the Skellam mechanism in the integer domain: the sum's L1 and L2 sensitivity
    (one user's scaled, rounded upload) and the variance of the noise on each coordinate."""

    l1_sensitivity: float
    l2_sensitivity: float
    variance: float


def release_rdp(order: int, event: SkellamDpEvent) -> float:
    """The Skellam bound of one release at integer `order` (module doc)."""
    mu, d1, d2 = event.variance, event.l1_sensitivity, event.l2_sensitivity
    if mu <= 0:
        return math.inf
    return order * d2**2 / (2 * mu) + min(((2 * order - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))


def sampled_rdp(order: int, sampling_rate: float, event: SkellamDpEvent) -> float:
    """Zhu and Wang's general upper bound for Poisson sampling at integer `order` >= 2, capped by
    the unsampled bound."""
    unsampled = release_rdp(order, event)
    q = sampling_rate
    if q == 0:
        return 0.0
    if q >= 1 or math.isinf(unsampled):
        return unsampled
    log_q, log_1q = math.log(q), math.log1p(-q)
    terms = [(order - 1) * log_1q + math.log(order * q - q + 1),
             math.log(special.comb(order, 2)) + 2 * log_q + (order - 2) * log_1q + release_rdp(2, event)]
    weights = [1.0, 1.0]
    for j in range(3, order + 1):
        log_binomial = special.gammaln(order + 1) - special.gammaln(j + 1) - special.gammaln(order - j + 1)
        terms.append(log_binomial + j * log_q + (order - j) * log_1q + (j - 1) * release_rdp(j, event))
        weights.append(3.0)
    bound = float(special.logsumexp(terms, b=weights)) / (order - 1)
    return min(bound, unsampled)


def rdp_curve(event: dp_accounting.DpEvent) -> np.ndarray:
    """RDP at `ORDERS` of one round: a `SkellamDpEvent`, Poisson-sampled or not."""
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and isinstance(event.event, SkellamDpEvent):
        rate, inner = float(event.sampling_probability), event.event
    elif isinstance(event, SkellamDpEvent):
        rate, inner = 1.0, event
    else:
        raise PrivacyError(f"the Skellam accountant composes Skellam rounds only, got {event}")
    return np.array([sampled_rdp(order, rate, inner) for order in ORDERS])


def epsilon(events: Iterable[dp_accounting.DpEvent], delta: float) -> float:
    """ε at `delta` of the rounds `events` composed (equal rounds are computed once)."""
    counts: dict[dp_accounting.DpEvent, int] = {}
    for event in events:
        counts[event] = counts.get(event, 0) + 1
    if not counts:
        return 0.0
    total = sum(count * rdp_curve(event) for event, count in counts.items())
    eps, _ = rdp_privacy_accountant.compute_epsilon(ORDERS, total, delta)
    return float(eps)


def is_skellam(event: dp_accounting.DpEvent) -> bool:
    """Whether a round's event is (a Poisson sample of) the Skellam mechanism."""
    inner = event.event if isinstance(event, dp_accounting.PoissonSampledDpEvent) else event
    return isinstance(inner, SkellamDpEvent)
