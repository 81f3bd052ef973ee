"""Distributed DP's accountant (`tff_pipeline.privacy.skellam`) against computations that share no
code with it: the exact Rényi divergence of one-dimensional Skellam distributions, summed here;
dp-accounting's PLD of the same sampled, composed mechanism; and the Gaussian limit."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from scipy import special, stats

from tff_pipeline.privacy import accounting, skellam
from tff_pipeline.privacy.events import decode_event, encode_event
from tff_pipeline.privacy.skellam import SkellamDpEvent


def skellam_log_pmf(variance: float, support: np.ndarray) -> np.ndarray:
    return stats.skellam.logpmf(support, variance / 2, variance / 2)


def exact_renyi(order: int, shift: int, variance: float) -> float:
    """D_alpha(Sk + shift || Sk), summed over the support."""
    width = shift + int(80 * math.sqrt(variance)) + 200
    support = np.arange(-width, width + 1)
    log_p, log_q = skellam_log_pmf(variance, support - shift), skellam_log_pmf(variance, support)
    finite = np.isfinite(log_p) & np.isfinite(log_q)  # far tails underflow; their mass is below 1e-300
    log_p, log_q = log_p[finite], log_q[finite]
    return float(special.logsumexp(order * log_p + (1 - order) * log_q)) / (order - 1)


@pytest.mark.parametrize("variance, shift", [(50.0, 5), (400.0, 3), (8.0, 4)])
@pytest.mark.parametrize("order", [2, 5, 16, 64])
def test_one_release_bounds_the_exact_renyi_divergence_and_is_not_far_above_it(order, variance, shift):
    bound = skellam.release_rdp(order, SkellamDpEvent(l1_sensitivity=shift, l2_sensitivity=shift, variance=variance))
    exact = max(exact_renyi(order, shift, variance), exact_renyi(order, -shift, variance))
    gaussian = order * shift**2 / (2 * variance)  # the Gaussian mechanism's RDP at this variance
    assert bound >= exact * (1 - 1e-9)
    # Skellam's tails are heavier than a Gaussian's, so at high orders its exact divergence falls
    # below the Gaussian figure, which the bound keeps as its first term; the integer surcharge on
    # top of that stays small.
    assert bound <= max(exact, gaussian) * 1.5 + 0.05


def pld_epsilon(variance: float, shift: int, q: float, rounds: int, delta: float) -> float:
    """dp-accounting's PLD of the 1-D Poisson-sampled Skellam mechanism, each neighbour direction
    on its own (a PLD built symmetric from one ordered pair), the larger ε."""
    width = shift + int(40 * math.sqrt(variance)) + 100
    support = np.arange(-width, width + 1)
    base = skellam_log_pmf(variance, support)
    mixed = np.logaddexp(math.log1p(-q) + base, math.log(q) + skellam_log_pmf(variance, support - shift))
    epsilons = []
    for upper, lower in ((mixed, base), (base, mixed)):
        pld = privacy_loss_distribution.from_two_probability_mass_functions(
            dict(zip(support.tolist(), lower.tolist())), dict(zip(support.tolist(), upper.tolist())),
            value_discretization_interval=1e-3, log_mass_truncation_bound=-50)
        epsilons.append(pld.self_compose(rounds).get_epsilon_for_delta(delta))
    return max(epsilons)


@pytest.mark.parametrize("variance, shift, q, rounds", [(100.0, 10, 0.1, 50), (36.0, 3, 0.05, 200)])
def test_sampled_and_composed_rounds_bound_the_pld_of_the_same_mechanism(variance, shift, q, rounds):
    delta = 1e-5
    event = dp_accounting.PoissonSampledDpEvent(q, SkellamDpEvent(shift, shift, variance))
    ours = skellam.epsilon([event] * rounds, delta)
    tight = pld_epsilon(variance, shift, q, rounds, delta)
    assert ours >= tight * 0.99  # an upper bound (PLD is near exact; its pessimistic rounding adds a little)
    assert ours <= tight * 1.6   # and not a vacuous one (RDP's conversion costs some)


def test_with_much_noise_on_a_fine_grid_it_is_the_gaussian_mechanism():
    """Scaled far up (sensitivity 10^4 in integers, variance (z 10^4)^2) the integer surcharge
    vanishes and ε is the subsampled Gaussian's (dp-accounting's RDP), up to Zhu and Wang's looser
    subsampling bound."""
    z, q, rounds, delta = 1.0, 0.02, 300, 1e-5
    l2 = 1e4
    event = dp_accounting.PoissonSampledDpEvent(q, SkellamDpEvent(l2 * 100, l2, (z * l2) ** 2))
    ours = skellam.epsilon([event] * rounds, delta)
    gaussian = accounting.epsilon_rdp(z, q, rounds, delta)
    assert gaussian <= ours <= gaussian * 1.25


def test_more_noise_fewer_rounds_or_less_sampling_spend_less():
    base = SkellamDpEvent(300.0, 30.0, 900.0)
    eps = lambda event, q, t: skellam.epsilon([dp_accounting.PoissonSampledDpEvent(q, event)] * t, 1e-5)  # noqa: E731
    reference = eps(base, 0.1, 100)
    assert eps(SkellamDpEvent(300.0, 30.0, 1800.0), 0.1, 100) < reference
    assert eps(base, 0.1, 50) < reference
    assert eps(base, 0.05, 100) < reference
    assert skellam.epsilon([], 1e-5) == 0.0


def test_runs_compose_through_the_one_epsilon_and_store_their_events():
    event = dp_accounting.PoissonSampledDpEvent(0.1, SkellamDpEvent(120.0, 12.0, 400.0))
    assert decode_event(encode_event(event)) == event
    spent = accounting.epsilon([event] * 20, 1e-5)
    assert spent.rdp == pytest.approx(skellam.epsilon([event] * 20, 1e-5))
    assert spent.pld is None
    with pytest.raises(ValueError, match="all distributed DP"):
        accounting.epsilon([event, accounting.round_event(1.0, 0.1)], 1e-5)
