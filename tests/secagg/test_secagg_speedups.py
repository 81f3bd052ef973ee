"""The coordinator's fast paths give exactly what the plain ones give: batched Shamir reconstruction
(`ShamirCombiner` over `gf128`), word-window bit packing, and receiver-indexed share routing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir, _Element
from test_secagg_protocol import Round, make_params

from secagg import gf128
from secagg.errors import QuantizationError, SecAggError
from secagg.quantize import pack, packed_size, unpack
from secagg.shamir import ShamirCombiner, combine_shares, split_secret

# --- batched Shamir ---


def _library_combine(points, threshold):
    """pycryptodome's own combine, block by block, of the first `threshold` points."""
    used = points[:threshold]
    length = len(used[0][1])
    return b"".join(Shamir.combine([(x, share[i:i + 16]) for x, share in used]) for i in range(0, length, 16))


@pytest.mark.parametrize("threshold", [2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 20, 30])
def test_batched_combine_equals_the_library_for_many_x_sets(threshold):
    rng = random.Random(threshold)
    holders = threshold + 6
    jobs, secrets = [], []
    for _ in range(4):
        chosen = rng.sample(range(1, holders + 1), threshold)  # a random subset, in random order
        for _ in range(3):
            secret = rng.randbytes(rng.choice((16, 32, 48)))
            shares = split_secret(secret, threshold=threshold, num_shares=holders)
            extra = rng.choice([x for x in range(1, holders + 1) if x not in chosen])
            jobs.append([(x, shares[x - 1]) for x in chosen] + [(extra, shares[extra - 1])])  # only t are used
            secrets.append(secret)
    batched = ShamirCombiner(threshold).combine_many(jobs)
    assert batched == secrets
    assert batched == [_library_combine(job, threshold) for job in jobs]


def test_batched_combine_of_arbitrary_share_values_equals_the_library():
    """Not only valid sharings: any share values (zeros, all ones, random) at any x up to 1024 combine
    to the library's answer."""
    rng = random.Random(7)
    for threshold in (2, 6, 17):
        jobs = []
        for _ in range(3):
            xs = rng.sample(range(1, 1025), threshold)
            jobs += [[(x, value) for x in xs] for value in (bytes(16), b"\xff" * 16)]
            jobs += [[(x, rng.randbytes(32)) for x in xs] for _ in range(3)]
        assert ShamirCombiner(threshold).combine_many(jobs) == [_library_combine(job, threshold) for job in jobs]


def test_a_thousand_secrets_with_their_own_x_sets_equal_the_library():
    """The dropout case: nearly every secret has its own x-set, all reconstructed in one pass."""
    rng = random.Random(11)
    t, holders = 17, 55
    secrets = [rng.randbytes(16) for _ in range(40)]  # sharing is slow: 40 sharings, 1,000 x-sets
    sharings = [split_secret(secret, threshold=t, num_shares=holders) for secret in secrets]
    jobs = [[(x, sharings[k % 40][x - 1]) for x in sorted(rng.sample(range(1, holders + 1), t))] for k in range(1000)]
    assert len({tuple(x for x, _ in job) for job in jobs}) > 990
    assert ShamirCombiner(t).combine_many(jobs) == [secrets[k % 40] for k in range(1000)]


@pytest.mark.parametrize("size", [1, 3, 300])
def test_field_products_equal_pycryptodome(size):
    rng = random.Random(size)
    left = [rng.randbytes(16) for _ in range(size)] + [bytes(16), b"\xff" * 16, (1).to_bytes(16, "big")]
    right = [rng.randbytes(16) for _ in range(size)] + [b"\xff" * 16, b"\xff" * 16, rng.randbytes(16)]
    ours = gf128.to_blocks(gf128.multiply(gf128.from_blocks(b"".join(left), len(left)),
                                          gf128.from_blocks(b"".join(right), len(right))))
    assert ours == [(_Element(a) * _Element(b)).encode() for a, b in zip(left, right)]
    small = [rng.randrange(1, 2048) for _ in left]  # the early stop for small multipliers
    ours = gf128.to_blocks(gf128.multiply(gf128.from_blocks(b"".join(left), len(left)), gf128.from_ints(small)))
    assert ours == [(_Element(a) * _Element(b)).encode() for a, b in zip(left, small)]
    inverses = gf128.inverses_of_small(np.array(small))
    assert gf128.to_blocks(gf128.multiply(inverses, gf128.from_ints(small))) == [(1).to_bytes(16, "big")] * len(small)


def test_a_field_that_disagrees_with_the_library_is_refused(monkeypatch):
    gf128.check_against_library.cache_clear()
    real = gf128.multiply
    monkeypatch.setattr(gf128, "multiply", lambda a, b: real(a, b) ^ np.uint64(1))
    with pytest.raises(SecAggError, match="disagrees"):
        ShamirCombiner(2).combine_many([[(1, bytes(16)), (2, bytes(16))]])
    gf128.check_against_library.cache_clear()


@pytest.mark.parametrize("job", [
    [(1, bytes(16)), (1, bytes(16))],
    [(1, bytes(16)), (2, bytes(32))],
    [(0, bytes(16)), (2, bytes(16))],
    [(1, bytes(15)), (2, bytes(15))],
    [(1, "x" * 16), (2, bytes(16))],
    [(1, bytes(16))],
    [(1, bytes(16)), [2, bytes(16)]],
])
def test_batched_combine_validates_like_combine_shares(job):
    with pytest.raises(SecAggError):
        combine_shares(job, threshold=2)
    good = [(1, bytes(16)), (2, bytes(16))]
    with pytest.raises(SecAggError):
        ShamirCombiner(2).combine_many([good, job])


def test_combining_rows_equals_combining_pairs():
    rng = np.random.default_rng(4)
    threshold, secrets = 5, [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(30)]
    jobs = []
    for k, secret in enumerate(secrets):
        shares = split_secret(secret, threshold=threshold, num_shares=9)
        chosen = sorted(rng.choice(9, threshold, replace=False) + 1) if k % 3 else list(range(1, threshold + 1))
        jobs.append([(int(x), shares[x - 1]) for x in chosen])
    xs = np.array([[x for x, _ in job] for job in jobs])
    values = b"".join(share for job in jobs for _, share in job)
    assert ShamirCombiner(threshold).combine_rows(xs, values, 32) == secrets == ShamirCombiner(threshold).combine_many(jobs)


@pytest.mark.parametrize("xs, values, share_bytes, match", [
    (np.array([[1, 1]]), bytes(32), 16, "same x-coordinate"),
    (np.array([[0, 2]]), bytes(32), 16, "x-coordinate"),
    (np.array([[1, 2000]]), bytes(32), 16, "x-coordinate"),
    (np.array([[1, 2]]), bytes(31), 16, "shares of 16 bytes"),
    (np.array([[1, 2, 3]]), bytes(48), 16, "shape"),
    (np.array([[1.0, 2.0]]), bytes(32), 16, "integer array"),
    (np.array([[1, 2]]), bytes(30), 15, "multiple of 16"),
    (np.array([[1, 2]]), "x" * 32, 16, "shares of 16 bytes"),
])
def test_combining_rows_validates_its_input(xs, values, share_bytes, match):
    with pytest.raises(SecAggError, match=match):
        ShamirCombiner(2).combine_rows(xs, values, share_bytes)


@pytest.mark.parametrize("threshold", [1, True, 1.5, 2000])
def test_combiner_refuses_bad_parameters(threshold):
    with pytest.raises(SecAggError):
        ShamirCombiner(threshold)


def test_the_server_uses_the_smallest_x_coordinates():
    params = make_params(20)
    game = Round.start(params)
    game.advertise(), game.share(), game.mask()
    game.unmask(absent={0, 5})
    survivors, _ = game.server.unmask_request()
    t = params.threshold
    xs, values, short = game.server._smallest_points(survivors)
    assert short == [] and xs.shape == (len(survivors), t)
    for row, owner in enumerate(survivors):
        neighbourhood = params.neighbourhood(owner)
        held = {holder: revealed[owner] for holder, revealed in game.server._revealed.items() if owner in revealed}
        assert list(xs[row]) == sorted(neighbourhood.index(h) + 1 for h in held)[:t]
        for j, x in enumerate(xs[row]):
            assert values[16 * (row * t + j):16 * (row * t + j + 1)] == held[neighbourhood[x - 1]]
    total, survivors = game.server.result()
    assert np.array_equal(total, game.expected(survivors))


# --- packing ---


def _reference_pack(values: np.ndarray, bit_width: int) -> bytes:
    """The original one-byte-per-bit implementation."""
    width = (bit_width + 7) // 8
    low = values.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)[:, :width]
    bits = np.unpackbits(low, axis=1, bitorder="little")[:, :bit_width]
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def _reference_unpack(data: bytes, bit_width: int, count: int) -> np.ndarray:
    """The original one-byte-per-bit implementation (after its length and padding checks)."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    used = count * bit_width
    assert not bits[used:].any()
    width = (bit_width + 7) // 8
    fields = np.zeros((count, 8 * width), np.uint8)
    fields[:, :bit_width] = bits[:used].reshape(count, bit_width)
    octets = np.zeros((count, 8), np.uint8)
    octets[:, :width] = np.packbits(fields, axis=1, bitorder="little")
    return octets.reshape(-1).view("<u8").astype(np.uint64)


@pytest.mark.parametrize("bits", range(1, 65))
def test_pack_and_unpack_match_the_reference(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 1003):
        values = rng.integers(0, 2**bits, count, dtype=np.uint64) if bits < 64 \
            else rng.integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)
        if count > 2:
            values[0], values[-1] = 0, (1 << bits) - 1  # extremes at both ends
        data = pack(values, bits)
        assert data == _reference_pack(values, bits)
        assert len(data) == packed_size(count, bits)
        out = unpack(data, bits, count)
        assert out.dtype == np.uint64 and out.shape == (count,) and np.array_equal(out, values)
        # arbitrary bytes with clean padding: the same values as the reference
        noise = bytearray(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
        if (count * bits) % 8:
            noise[-1] &= (1 << ((count * bits) % 8)) - 1
        assert np.array_equal(unpack(bytes(noise), bits, count), _reference_unpack(bytes(noise), bits, count))
        for form in (bytearray(noise), memoryview(bytes(noise))):
            assert np.array_equal(unpack(form, bits, count), _reference_unpack(bytes(noise), bits, count))


@pytest.mark.parametrize("bits", [1, 5, 7, 9, 13, 33, 57, 58, 63])
def test_unpack_refuses_every_nonzero_padding_bit(bits):
    count = 11 if (11 * bits) % 8 else 13
    data = pack(np.random.default_rng(0).integers(0, 2**bits, count, dtype=np.uint64), bits)
    used = (count * bits) % 8
    assert used
    for bit in range(used, 8):
        bad = data[:-1] + bytes([data[-1] | (1 << bit)])
        with pytest.raises(QuantizationError, match="padding"):
            unpack(bad, bits, count)
    with pytest.raises(QuantizationError, match="expected"):
        unpack(data + b"\x00", bits, count)
    with pytest.raises(QuantizationError, match="expected"):
        unpack(data[:-1], bits, count)
    with pytest.raises(QuantizationError, match="expected"):
        unpack(memoryview(np.zeros(len(data), np.uint32)), bits, count)  # len counts items, not bytes


# --- routing ---


def _reference_shares_for(server, index):
    return {u: sent[index] for u, sent in sorted(server._shares.items()) if index in sent}


def test_routing_matches_a_scan_of_every_participant():
    params = make_params(60)  # degree 46 < n - 1: a real neighbour graph
    game = Round.start(params, rng_seed=1)
    game.advertise(absent=set())
    for i in sorted(game.server._keys):
        if i in {4, 50}:
            continue
        game.server.receive_shares(i, game.devices[i].share_keys(game.server.keys_for(i)))
    for i in range(60):
        if i in game.server._shares:
            routed = game.server.shares_for(i)
            assert routed == _reference_shares_for(game.server, i) and list(routed) == sorted(routed)
            with pytest.raises(TypeError):  # the server's routing, handed out without a copy: read-only
                routed[next(iter(routed))] = b"forged"  # type: ignore[index]
            assert game.server.shares_for(i) == routed
        else:
            with pytest.raises(SecAggError):
                game.server.shares_for(i)
    dropped_after_shares = {9, 40, 41}
    game.mask(absent=dropped_after_shares)
    survivors, dropped = game.server.unmask_request()
    for i in survivors:
        near = {v for v in params.graph[i] if v in game.server._shares} | {i}
        assert game.server.unmask_request_for(i) == (tuple(w for w in survivors if w in near),
                                                      tuple(v for v in dropped if v in near))
    game.unmask(absent={55})
    total, reporters = game.server.result()
    assert np.array_equal(total, game.expected(reporters))


def test_refused_shares_leave_the_routing_unchanged():
    params = make_params(20)
    game = Round.start(params)
    game.advertise()
    good = game.devices[0].share_keys(game.server.keys_for(0))
    bad = dict(good)
    bad[next(iter(bad))] = b"short"
    with pytest.raises(SecAggError):
        game.server.receive_shares(0, bad)
    assert game.server._shares == {}
    game.server.receive_shares(0, good)
    with pytest.raises(SecAggError):
        game.server.receive_shares(0, good)  # twice
    assert game.server._shares == {0: good}
