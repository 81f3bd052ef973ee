"""User-level (epsilon, delta) of DP-FedAvg with Poisson-sampled cohorts, via dp-accounting.

Each round samples every user independently with probability q = expected_cohort / num_users,
clips each user's whole update, and adds Gaussian noise with stddev z * clip to the sum. One round
is therefore a `PoissonSampledDpEvent(q, GaussianDpEvent(z))`; T rounds compose. Both the RDP
accountant (an upper bound) and the PLD accountant (tighter) are reported. Adaptive clipping
spends part of the same z on the clipped-count query; TFF's factory splits z so that the total
noise multiplier is z, so the same event describes it.

Two ways in, one composition: `epsilon(events, delta)` composes the events a run applied (the
simulation's, read from its aggregator every round, and the coordinator's ledger); the plan's
`epsilon_rdp` / `epsilon_pld` compose T rounds of the planned (z, q) (calibration, the budget's
last round, export of an earlier round). Distributed DP's Skellam rounds compose by RDP in
`skellam` (no PLD). Both build their accountants here (`_rdp`, `_pld`, with
`PLD_DISCRETIZATION`), so T equal events give exactly the plan's figure.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import dp_accounting
from dp_accounting import pld, rdp

from tff_pipeline.privacy import skellam
from tff_pipeline.privacy.errors import PrivacyError
from tff_pipeline.privacy.events import decode_event, encode_event

# The PLD accountant's value discretisation, for every ε it reports (plan, simulation, ledger).
PLD_DISCRETIZATION = 1e-3


class Epsilon(NamedTuple):
    """ε at one δ by the RDP accountant (an upper bound) and the PLD accountant (tighter; None
    when it was not asked for)."""

    rdp: float
    pld: float | None


def epsilon(events: Iterable[dp_accounting.DpEvent], delta: float, *, with_pld: bool = True) -> Epsilon:
    """ε at `delta` of `events` composed: one event per round, each `PoissonSampledDpEvent(q,
    what the DP query applied)` (`events.sampled_round`). No events: ε 0. ValueError for a delta
    outside (0, 1) or an event an accountant cannot compose."""
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    events = list(events)
    if any(skellam.is_skellam(event) for event in events):
        if not all(skellam.is_skellam(event) for event in events):
            raise PrivacyError("a run's rounds are all distributed DP (Skellam) or none are")
        return Epsilon(skellam.epsilon(events, delta), None)  # RDP only: dp-accounting's PLD has no Skellam
    grouped = _grouped(events)
    if not grouped:
        return Epsilon(0.0, 0.0 if with_pld else None)
    return Epsilon(_rdp(grouped, delta), _pld(grouped, delta) if with_pld else None)


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
    """RDP ε of `rounds` rounds of the plan's (z, q)."""
    if rounds == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    return _rdp([training_event(noise_multiplier, sampling_rate, rounds)], delta)


def epsilon_pld(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """PLD ε of `rounds` rounds of the plan's (z, q)."""
    if rounds == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    return _pld([training_event(noise_multiplier, sampling_rate, rounds)], delta)


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
        raise PrivacyError(
            f"delta={delta:g} must be in (0, 1/num_users) = (0, {1.0 / num_users:.3g}) "
            f"for {num_users} users; choose a smaller delta, e.g. {_suggested_delta(num_users):g} (at most 1/(10 x users))"
        )


def _suggested_delta(num_users: int) -> float:
    """A delta well inside (0, 1/num_users): the power of ten at or below 1/(10 num_users)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10 * max(num_users, 1))))


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    *, target_epsilon: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """Smallest noise multiplier whose RDP epsilon after `rounds` rounds is <= target.

    RDP upper-bounds the PLD figure, so the run ends within budget under both accountants.
    Called by the planner (`planner.plan_budget`), whose z the config then records, and by
    `planner.plan_privacy` for a config no planner saw. Cached (a bisection of ~20 RDP
    evaluations, seconds on a busy machine): tests and benchmarks plan the same budgets again.
    """
    if target_epsilon <= 0:
        raise PrivacyError(f"target epsilon must be > 0, got {target_epsilon}")

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
        raise PrivacyError(f"no noise multiplier gives epsilon {target_epsilon:g} at delta {delta:g} over {rounds} "
                         f"rounds sampled at rate {sampling_rate:.4g} (the accountant: {error})") from None
    # calibrate_dp_mechanism returns a value on the safe side of the bracket; check it.
    assert epsilon_rdp(z, sampling_rate, rounds, delta) <= target_epsilon * (1 + 1e-9)
    return float(z)


def max_rounds_within(
    *, target_epsilon: float, noise_multiplier: float, sampling_rate: float, delta: float, limit: int,
    epsilon_of: Callable[[int], float] | None = None,
) -> int:
    """Largest T <= limit whose RDP epsilon is <= target (binary search; epsilon grows with T).
    `epsilon_of(T)` replaces the Gaussian rounds' ε (distributed DP's Skellam rounds)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        spent = epsilon_rdp(noise_multiplier, sampling_rate, mid, delta) if epsilon_of is None else epsilon_of(mid)
        if spent <= target_epsilon:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------------------------


def _rdp(events: list[dp_accounting.DpEvent], delta: float) -> float:
    accountant = rdp.RdpAccountant()
    _compose(accountant, events)
    return float(accountant.get_epsilon(delta))


def _pld(events: list[dp_accounting.DpEvent], delta: float) -> float:
    accountant = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    _compose(accountant, events)
    return float(accountant.get_epsilon(delta))


def _compose(accountant: dp_accounting.PrivacyAccountant, events: list[dp_accounting.DpEvent]) -> None:
    for event in events:
        if not accountant.supports(event):
            raise PrivacyError(f"{type(accountant).__name__} cannot compose {event}")
        accountant.compose(event)


def _grouped(events: Iterable[dp_accounting.DpEvent]) -> list[dp_accounting.DpEvent]:
    """Equal events folded into `SelfComposedDpEvent`s (composition commutes). PLD composes a
    repeated event by one self-composition instead of one convolution per round, and T rounds of
    one event give exactly `training_event`."""
    counts = collections.Counter(encode_event(_single_gaussian(event)) for event in events)
    return [dp_accounting.SelfComposedDpEvent(decode_event(text), count) for text, count in counts.items()]


def _single_gaussian(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """A Poisson-sampled composition of Gaussians as the one Gaussian it equals.

    Gaussian queries on the same sample compose exactly into one Gaussian of noise multiplier
    (sum z_i^-2)^-1/2 (Mironov et al. 2019, arXiv:1812.06210, section 3; RDP's accountant does the
    same reduction). PLD only composes a PoissonSampled Gaussian, so an adaptive-clipping round
    (update and clipped count) needs this form; TFF splits z so that it gives back z.
    """
    if type(event) is not dp_accounting.PoissonSampledDpEvent:
        return event
    inverse_square = _inverse_square_sum(event.event)
    if inverse_square is None:
        return event  # not Gaussians only: left to the accountants to accept or refuse
    if inverse_square == 0:
        return dp_accounting.NoOpDpEvent()  # no noised release at all
    noise_multiplier = 0.0 if math.isinf(inverse_square) else inverse_square**-0.5
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.PoissonSampledDpEvent(event.sampling_probability, gaussian)


def _inverse_square_sum(event: dp_accounting.DpEvent) -> float | None:
    """sum z^-2 over the Gaussians of a nest of them (inf for a noiseless one); None otherwise."""
    kind = type(event)
    if kind is dp_accounting.NoOpDpEvent:
        return 0.0
    if kind is dp_accounting.GaussianDpEvent:
        return math.inf if event.noise_multiplier == 0 else event.noise_multiplier**-2
    if kind is dp_accounting.ComposedDpEvent:
        parts = [_inverse_square_sum(e) for e in event.events]
        known = [p for p in parts if p is not None]
        return None if len(known) < len(parts) else sum(known)
    if kind is dp_accounting.SelfComposedDpEvent:
        part = _inverse_square_sum(event.event)
        return None if part is None else (0.0 if event.count == 0 else event.count * part)
    return None
