"""Privacy accounting: agrees with dp_accounting composed by hand, and behaves monotonically."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from tff_pipeline.privacy import accounting

SETTINGS = [
    # (noise_multiplier, sampling_rate, rounds, delta)
    (1.0, 0.01, 40, 1e-5),
    (0.8, 0.05, 15, 1e-4),
    (2.5, 0.1, 60, 1e-6),
]
# Sequential PLD composition is slow; keep these short.
PLD_SETTINGS = [(1.0, 0.01, 20, 1e-5), (0.8, 0.05, 10, 1e-4)]


def _composed(z: float, q: float, rounds: int, accountant) -> object:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    for _ in range(rounds):
        accountant.compose(event)
    return accountant


@pytest.mark.parametrize("z,q,rounds,delta", SETTINGS)
def test_epsilon_rdp_matches_rdp_accountant(z, q, rounds, delta):
    expected = _composed(z, q, rounds, rdp.RdpAccountant()).get_epsilon(delta)
    assert accounting.epsilon_rdp(z, q, rounds, delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("z,q,rounds,delta", PLD_SETTINGS)
def test_epsilon_pld_matches_pld_accountant(z, q, rounds, delta):
    expected = _composed(z, q, rounds, pld.PLDAccountant(value_discretization_interval=1e-3)).get_epsilon(delta)
    got = accounting.epsilon_pld(z, q, rounds, delta)
    # Self-composition vs. sequential composition of PLDs may round slightly differently.
    assert got == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("z,q,rounds,delta", SETTINGS[:1] + [(1.5, 0.2, 300, 1e-6)])
def test_pld_is_not_looser_than_rdp(z, q, rounds, delta):
    assert accounting.epsilon_pld(z, q, rounds, delta) <= accounting.epsilon_rdp(z, q, rounds, delta)


def test_privacy_spent_reports_both():
    spent = accounting.privacy_spent(noise_multiplier=1.0, sampling_rate=0.02, rounds=50, delta=1e-5)
    assert spent.epsilon_rdp == pytest.approx(accounting.epsilon_rdp(1.0, 0.02, 50, 1e-5))
    assert 0 < spent.epsilon_pld <= spent.epsilon_rdp
    assert accounting.privacy_spent(
        noise_multiplier=1.0, sampling_rate=0.02, rounds=50, delta=1e-5, with_pld=False
    ).epsilon_pld is None


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    q, delta = 0.02, 1e-5
    by_rounds = [accounting.epsilon_rdp(1.0, q, t, delta) for t in (10, 50, 200, 1000)]
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:]))
    by_noise = [accounting.epsilon_rdp(z, q, 200, delta) for z in (0.7, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:]))
    by_rate = [accounting.epsilon_rdp(1.0, r, 200, delta) for r in (0.005, 0.02, 0.1)]
    assert all(a < b for a, b in zip(by_rate, by_rate[1:]))


def test_degenerate_cases():
    assert accounting.epsilon_rdp(1.0, 0.1, 0, 1e-5) == 0.0
    assert accounting.epsilon_rdp(1.0, 0.0, 10, 1e-5) == 0.0
    assert math.isinf(accounting.epsilon_rdp(0.0, 0.1, 10, 1e-5))
    assert math.isinf(accounting.epsilon_pld(0.0, 0.1, 10, 1e-5))


@pytest.mark.parametrize("target,q,rounds,delta", [(2.0, 0.02, 100, 1e-5), (8.0, 0.1, 50, 1e-4)])
def test_calibrate_noise_multiplier_is_tight(target, q, rounds, delta):
    z = accounting.calibrate_noise_multiplier(target_epsilon=target, sampling_rate=q, rounds=rounds, delta=delta)
    assert z > 0
    assert accounting.epsilon_rdp(z, q, rounds, delta) <= target
    assert accounting.epsilon_rdp(0.99 * z, q, rounds, delta) > target


def test_calibrate_refuses_nonpositive_target():
    with pytest.raises(ValueError):
        accounting.calibrate_noise_multiplier(target_epsilon=0.0, sampling_rate=0.1, rounds=10, delta=1e-5)


@pytest.mark.parametrize("target,z,q,delta", [(2.0, 1.0, 0.02, 1e-5), (3.0, 0.9, 0.05, 1e-5)])
def test_max_rounds_within_is_the_largest_feasible(target, z, q, delta):
    t = accounting.max_rounds_within(target_epsilon=target, noise_multiplier=z, sampling_rate=q, delta=delta, limit=10_000)
    assert 0 < t < 10_000
    assert accounting.epsilon_rdp(z, q, t, delta) <= target
    assert accounting.epsilon_rdp(z, q, t + 1, delta) > target


def test_max_rounds_within_respects_limit():
    assert accounting.max_rounds_within(
        target_epsilon=100.0, noise_multiplier=5.0, sampling_rate=0.01, delta=1e-5, limit=37
    ) == 37


@pytest.mark.parametrize("delta", [0.0, -1e-6, 1e-3, 2e-3, 1.0])
def test_validate_delta_refuses_bad_values(delta):
    with pytest.raises(ValueError):
        accounting.validate_delta(delta, num_users=1000)


@pytest.mark.parametrize("delta", [1e-5, 9.99e-4])
def test_validate_delta_accepts_small_values(delta):
    accounting.validate_delta(delta, num_users=1000)


def test_known_value_from_the_literature():
    """DP-SGD on MNIST-sized data: N=60000, batch 256 (q=256/60000), sigma=1.12, 60 epochs,
    delta=1e-5. Opacus' compute_dp_sgd_privacy docs report (2.95, 1e-5) from the RDP accountant
    with orders {10, 20, 100} and the classic RDP->DP conversion; dp_accounting uses more orders
    and a tighter conversion, so its figure is at most that and of the same magnitude."""
    q = 256 / 60000
    steps = math.ceil(60 / q)
    eps_rdp = accounting.epsilon_rdp(1.12, q, steps, 1e-5)
    assert 2.0 < eps_rdp <= 2.95 + 0.005
    eps_pld = accounting.epsilon_pld(1.12, q, steps, 1e-5)
    assert 1.5 < eps_pld <= eps_rdp


@pytest.mark.parametrize(("users", "suggested"), [(1000, "0.0001"), (943, "0.0001"), (100_000, "1e-06"), (20_000, "1e-06")])
def test_a_refused_delta_names_one_that_fits_the_population(users, suggested):
    with pytest.raises(ValueError, match=f"e.g. {suggested} ") as refused:
        accounting.validate_delta(0.5, num_users=users)
    accounting.validate_delta(float(suggested), num_users=users)  # the suggestion is accepted
    assert "delta=" in str(refused.value)
