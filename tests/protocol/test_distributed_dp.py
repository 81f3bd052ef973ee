"""The device's numpy encoding of distributed DP (`protocol.distributed_dp`) against TFF's own
`DistributedDpSumFactory`, and the noise rule with devices that vanish after masking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol import distributed_dp as ddp
from secagg.quantize import FixedPoint


def spec(**overrides) -> ddp.DistributedDpSpec:
    values = dict(bits=16, l2_clip=1.0, noise_multiplier=0.0, clients=10, noise_reporters=10, dim=101)
    values.update(overrides)
    return ddp.DistributedDpSpec(**values)


def test_the_encoding_equals_tffs_on_the_same_inputs_and_random_draws(tff_runtime, monkeypatch):
    """TFF's factory (noise 0, one client) rotates with angles drawn from the seed in its state and
    rounds with uniforms from the seed we pin; the numpy encoding given the same draws (TF's
    stateless uniforms for those seeds) decodes to the same vector, and with other draws it does not."""
    import tensorflow as tf
    import tensorflow_federated as tff
    from tensorflow_federated.python.aggregators import discretization
    from tensorflow_federated.python.aggregators.distributed_dp import DistributedDpSumFactory

    rounding_seed = 987654321
    original = discretization._stochastic_rounding
    monkeypatch.setattr(discretization, "_stochastic_rounding", lambda x, bound, scale, beta: original(
        x, bound, scale, beta, seed=tf.constant(rounding_seed, tf.int64)))
    ours = spec()
    x = np.random.default_rng(0).normal(size=ours.dim).astype(np.float32) * 0.3  # norm ~3: clipped to 1
    factory = DistributedDpSumFactory(noise_multiplier=0.0, expected_clients_per_round=ours.clients, bits=ours.bits,
                                      l2_clip=ours.l2_clip, mechanism="distributed_skellam", rotation_type="dft")
    process = factory.create(tff.TensorType(np.float32, [ours.dim]))
    state = process.initialize()
    output = process.next(state, [x])
    tff_scale = float(output.measurements["scale_factor"])
    assert tff_scale == pytest.approx(ours.scale, rel=1e-6)
    assert int(output.measurements["padded_dim"]) == ours.padded_dim
    assert float(output.measurements["scaled_inflated_l2"]) == pytest.approx(ours.scaled_l2_sensitivity, rel=1e-5)

    rotation_seed = tf.nest.flatten(state)[-1]  # the DFT factory's [timestamp, counter]
    angles = tf.random.stateless_uniform([ours.padded_dim // 2], seed=rotation_seed, minval=0, maxval=2).numpy() / 2
    uniforms = tf.random.stateless_uniform([ours.padded_dim], seed=[rounding_seed, 1], maxval=1).numpy()
    rounded = ddp.discretize(x, ours, angles.astype(np.float64), uniforms.astype(np.float64))
    # TFF's result, rotated back into the integer domain: the integers its client sent.
    padded = np.zeros(ours.padded_dim)
    padded[:ours.dim] = np.asarray(output.result, np.float64)
    tff_integers = ddp.rotate(padded, angles) * tff_scale
    # TF's float32 FFT of 51 points is off by up to ~1e-4 relative (measured: 0.003..0.11 in integer
    # units here), both ways; still far from half an integer.
    assert np.max(np.abs(tff_integers - np.rint(tff_integers))) < 0.3
    tff_integers = np.rint(tff_integers).astype(np.int64)
    # The same error can make TFF round a coordinate whose uniform lies within ~1e-4 of its fraction
    # the other way: at most one or two of the 102, by one.
    differ = rounded != tff_integers
    assert differ.sum() <= 2 and np.all(np.abs(rounded - tff_integers) <= 1)
    assert float(np.linalg.norm(tff_integers)) <= ours.scaled_l2_sensitivity
    other = ddp.discretize(x, ours, angles.astype(np.float64), np.random.default_rng(1).random(ours.padded_dim))
    assert np.sum(other != tff_integers) > ours.padded_dim // 10


def test_rotation_is_orthogonal_and_undone_by_the_server():
    rng = np.random.default_rng(3)
    x = rng.normal(size=64)
    angles = ddp.rotation_angles(b"round-seed-0001", 32)
    rotated = ddp.rotate(x, angles)
    assert np.linalg.norm(rotated) == pytest.approx(np.linalg.norm(x))
    np.testing.assert_allclose(ddp.unrotate(rotated, angles), x, atol=1e-12)
    assert not np.allclose(ddp.unrotate(rotated, ddp.rotation_angles(b"round-seed-0002", 32)), x, atol=1e-3)


def test_a_secure_sum_of_encodings_decodes_to_the_sum_of_clipped_updates_without_noise():
    ours = spec(clients=20, noise_reporters=20, dim=300)
    rng = np.random.default_rng(5)
    updates = [rng.normal(size=ours.dim) * 0.05 for _ in range(20)]
    fp = FixedPoint(bit_width=ours.bits, fraction_bits=0)
    total = np.zeros(ours.padded_dim, np.uint64)
    for update in updates:
        total = fp.add(total, ddp.encode(update, ours, b"seed-of-round-7", rng).elements)
    decoded = ddp.decode_sum(total, ours, b"seed-of-round-7")
    expected = sum(ddp.clip(u, ours.l2_clip) for u in updates)
    # stochastic rounding: unbiased, each coordinate off by < 1 / scale per device, independently
    assert np.max(np.abs(decoded - expected)) < 4 * math.sqrt(20) / ours.scale


@pytest.mark.parametrize("survivors", [10, 7])
def test_noise_that_reaches_the_server_has_the_planned_variance_whoever_vanishes(survivors):
    """The noise rule: each device adds (z C)^2 / m. Of 10 devices that masked their inputs, those
    that vanish take their noise shares with them; with at least m = 7 survivors the released sum
    still carries the planned variance (z C)^2 or more, never less."""
    ours = spec(noise_multiplier=1.0, l2_clip=0.5, clients=10, noise_reporters=7, dim=4000)
    rng = np.random.default_rng(11)
    uploads = [ddp.encode(rng.normal(size=ours.dim) * 0.01, ours, b"seed-of-round-9", rng) for _ in range(10)]
    kept = uploads[:survivors]
    fp = FixedPoint(bit_width=ours.bits, fraction_bits=0)
    total = np.zeros(ours.padded_dim, np.uint64)
    for upload in kept:
        total = fp.add(total, upload.elements)
    revealed = ddp.decode_sum(total, ours, b"seed-of-round-9")
    plaintext = ddp.decode(sum(u.rounded for u in kept), ours, b"seed-of-round-9")
    measured = float(np.std(revealed - plaintext))
    assert measured == pytest.approx(ours.noise_stddev(survivors), rel=0.05)
    assert ours.noise_stddev(survivors) >= ours.central_stddev * (1 - 1e-12)
    assert ours.noise_stddev(7) == pytest.approx(ours.central_stddev)


def test_skellam_noise_has_the_asked_variance_and_is_integer():
    noise = ddp.skellam_noise(37.5, 200_000, np.random.default_rng(2))
    assert noise.dtype == np.int64
    assert float(np.var(noise)) == pytest.approx(37.5, rel=0.02)
    assert abs(float(np.mean(noise))) < 0.05


def test_the_device_draws_its_private_randomness_from_os_entropy():
    a, b = ddp.private_rng().random(4), ddp.private_rng().random(4)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("overrides, message", [
    (dict(bits=23), "bits must be an integer in 1..22"),
    (dict(bits=3, clients=10), "log2"),
    (dict(bits=8, clients=200, dim=10), "raise the bit width"),
    (dict(l2_clip=0.0), "l2_clip must be > 0"),
    (dict(noise_multiplier=float("nan")), "noise_multiplier"),
    (dict(dim=0), "dim must be"),
])
def test_parameters_that_cannot_work_are_refused_with_their_name(overrides, message):
    with pytest.raises(ddp.DistributedDpError, match=message):
        spec(**overrides)


def test_vectors_of_the_wrong_size_or_values_are_refused():
    ours = spec()
    with pytest.raises(ddp.DistributedDpError, match="dimension is 101"):
        ddp.encode(np.zeros(100), ours, b"seed-of-round-1")
    with pytest.raises(ddp.DistributedDpError, match="non-finite"):
        ddp.encode(np.full(101, np.nan), ours, b"seed-of-round-1")
    with pytest.raises(ddp.DistributedDpError, match=">= 2"):
        ddp.decode_sum(np.full(102, 1 << 16, np.uint64), ours, b"seed-of-round-1")
    with pytest.raises(ddp.DistributedDpError, match="8..64 bytes"):
        ddp.rotation_angles(b"short", 3)
