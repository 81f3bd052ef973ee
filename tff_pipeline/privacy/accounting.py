"""User-level (epsilon, delta) of DP-FedAvg with Poisson-sampled cohorts, via dp-accounting.

Each round samples every user independently with probability q = expected_cohort / num_users,
clips each user's whole update, and adds Gaussian noise with stddev z * clip to the sum. One round
is therefore a `PoissonSampledDpEvent(q, GaussianDpEvent(z))`; T rounds compose. Both the RDP
accountant (an upper bound) and the PLD accountant (tighter) are reported. Adaptive clipping
spends part of the same z on the clipped-count query; TFF's factory splits z so that the total
noise multiplier is z, so the same event describes it.
"""

from __future__ import annotations

import dataclasses
import functools

import dp_accounting
from dp_accounting import pld, rdp

_PLD_DISCRETIZATION = 1e-3


@dataclasses.dataclass(frozen=True)
class PrivacySpent:
    epsilon_rdp: float
    epsilon_pld: float | None
    delta: float
    noise_multiplier: float
    sampling_rate: float
    rounds: int


def round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    """The DpEvent of one round of DP-FedAvg."""
    return dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )


def training_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(round_event(noise_multiplier, sampling_rate), rounds)


def epsilon_rdp(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    if rounds == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = rdp.RdpAccountant()
    accountant.compose(training_event(noise_multiplier, sampling_rate, rounds))
    return float(accountant.get_epsilon(delta))


def epsilon_pld(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    if rounds == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = pld.PLDAccountant(value_discretization_interval=_PLD_DISCRETIZATION)
    accountant.compose(training_event(noise_multiplier, sampling_rate, rounds))
    return float(accountant.get_epsilon(delta))


def privacy_spent(
    *, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, with_pld: bool = True
) -> PrivacySpent:
    return PrivacySpent(
        epsilon_rdp=epsilon_rdp(noise_multiplier, sampling_rate, rounds, delta),
        epsilon_pld=epsilon_pld(noise_multiplier, sampling_rate, rounds, delta) if with_pld else None,
        delta=delta,
        noise_multiplier=noise_multiplier,
        sampling_rate=sampling_rate,
        rounds=rounds,
    )


def validate_delta(delta: float, num_users: int) -> None:
    """Refuse a delta that would allow releasing one user's data outright."""
    if not 0 < delta < 1.0 / num_users:
        raise ValueError(
            f"delta={delta:g} must be in (0, 1/num_users) = (0, {1.0 / num_users:.3g}) "
            f"for {num_users} users"
        )


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    *, target_epsilon: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """Smallest noise multiplier whose RDP epsilon after `rounds` rounds is <= target.

    RDP upper-bounds the PLD figure, so the run ends within budget under both accountants.
    Cached: the planner, the plan's check and the coordinator ask for the same value (a bisection
    of ~20 RDP evaluations, seconds on a busy machine).
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")

    def make_event(z: float) -> dp_accounting.DpEvent:
        return training_event(z, sampling_rate, rounds)

    try:
        z = dp_accounting.calibrate_dp_mechanism(
            rdp.RdpAccountant,
            make_event,
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(0.1, 1.0),
            tol=1e-4,
        )
    except (ArithmeticError, ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as error:
        raise ValueError(f"no noise multiplier gives epsilon {target_epsilon:g} at delta {delta:g} over {rounds} "
                         f"rounds sampled at rate {sampling_rate:.4g} (the accountant: {error})") from None
    # calibrate_dp_mechanism returns a value on the safe side of the bracket; check it.
    assert epsilon_rdp(z, sampling_rate, rounds, delta) <= target_epsilon * (1 + 1e-9)
    return float(z)


def max_rounds_within(
    *, target_epsilon: float, noise_multiplier: float, sampling_rate: float, delta: float, limit: int
) -> int:
    """Largest T <= limit whose RDP epsilon is <= target (binary search; epsilon grows with T)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if epsilon_rdp(noise_multiplier, sampling_rate, mid, delta) <= target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo
