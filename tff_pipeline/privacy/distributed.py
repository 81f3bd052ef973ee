"""Distributed DP's parameters and rounds as the accountant sees them (`--dp distributed`).

The mechanism lives in `protocol.distributed_dp` (the devices' encoding, the same steps as TFF's
`DistributedDpSumFactory`); this module turns a run's settings into its `DistributedDpSpec`, a
round into its `SkellamDpEvent`, and calibrates z for a budget the way the central modes do.

What a round is charged: the noise that reached the sum, counted in shares of (z C)^2 / m, at most
m of them (extra noise is not credited). A deployment releases a round only with at least m
reporters, so every released round is charged the planned variance (z C)^2. The simulation has no
dropouts, but its Poisson cohorts vary: it takes m a little below the expected cohort
(`simulation_noise_reporters`), and the rare cohort smaller than m is charged what its k < m shares
carried.
"""

from __future__ import annotations

import functools
import math

import dp_accounting

from protocol.distributed_dp import DistributedDpError, DistributedDpSpec
from protocol.upload import UploadLayout
from tff_pipeline.privacy import skellam
from tff_pipeline.privacy.errors import PrivacyError


def model_values(num_items: int, dim: int) -> int:
    """The length of the vector distributed DP noises: the uploaded model parts (`protocol.upload`)."""
    return UploadLayout(num_items=num_items, dim=dim).num_model_values


def simulation_noise_reporters(expected_clients: float, sampling_rate: float) -> int:
    """m for a simulation: two standard deviations of the Poisson cohort below its mean (about 2%
    of cohorts are smaller)."""
    spread = math.sqrt(max(expected_clients * (1 - sampling_rate), 0.0))
    return max(1, math.floor(expected_clients - 2 * spread))


def spec_for(*, bits: int, clip: float, noise_multiplier: float, expected_clients: float, noise_reporters: int,
             dim: int) -> DistributedDpSpec:
    """The round's spec; PrivacyError names what does not fit (bits too few for the cohort...)."""
    try:
        return DistributedDpSpec(bits=bits, l2_clip=clip, noise_multiplier=noise_multiplier,
                                 clients=max(1, math.ceil(expected_clients)), noise_reporters=noise_reporters, dim=dim)
    except DistributedDpError as error:
        raise PrivacyError(f"distributed DP: {error}") from None


def round_event(spec: DistributedDpSpec) -> skellam.SkellamDpEvent:
    """What one planned round releases: the sum's integer sensitivities and m shares of noise."""
    return skellam.SkellamDpEvent(l1_sensitivity=float(spec.scaled_l1_sensitivity),
                                  l2_sensitivity=float(spec.scaled_l2_sensitivity),
                                  variance=spec.noise_reporters * spec.scaled_local_variance)


def epsilon(spec: DistributedDpSpec, *, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε of `rounds` planned rounds."""
    if rounds == 0 or sampling_rate == 0:
        return 0.0
    if spec.noise_multiplier == 0:
        return math.inf
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, round_event(spec))
    return skellam.epsilon([event] * rounds, delta)


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(*, target_epsilon: float, sampling_rate: float, rounds: int, delta: float, bits: int,
                               clip: float, expected_clients: float, noise_reporters: int, dim: int) -> float:
    """The smallest z (to 0.1%) whose Skellam ε over `rounds` rounds is at most the target. The
    spec changes with z (the scale, hence the rounding's inflation of the sensitivity), so each
    candidate is a whole spec."""

    def eps(z: float) -> float:
        spec = spec_for(bits=bits, clip=clip, noise_multiplier=z, expected_clients=expected_clients,
                        noise_reporters=noise_reporters, dim=dim)
        return epsilon(spec, sampling_rate=sampling_rate, rounds=rounds, delta=delta)

    low, high = 0.05, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise PrivacyError(f"no noise multiplier gives epsilon {target_epsilon:g} with distributed DP over "
                               f"{rounds} rounds sampled at rate {sampling_rate:.4g}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if eps(middle) > target_epsilon else (low, middle)
    return high
