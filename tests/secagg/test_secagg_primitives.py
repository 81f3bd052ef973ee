"""The building blocks: PRG, keys and sealing, multi-block Shamir, the neighbour graph, parameters."""

from __future__ import annotations

import itertools
import math
import os
import time
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from secagg import graph as graph_module
from secagg import keys
from secagg.errors import SecAggError
from secagg.graph import choose_degree_and_threshold, neighbour_graph, neighbours_of, privacy_bits_achieved
from secagg.params import SecAggParams
from secagg.prg import KeystreamSum, expand
from secagg.quantize import FixedPoint
from secagg.shamir import combine_shares, split_secret

# A point of order 8 on Curve25519 (any scalar times it is the identity).
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


# prg

def test_prg_is_deterministic_and_masked():
    seed = bytes(range(16))
    a, b = expand(seed, 1000, 20), expand(seed, 1000, 20)
    assert a.dtype == np.uint64 and np.array_equal(a, b)
    assert int(a.max()) < 2**20 and not np.array_equal(a, expand(bytes(16), 1000, 20))
    full = expand(seed, 1000, 64)
    assert np.array_equal(full & np.uint64(2**20 - 1), a)  # the same stream, reduced
    assert np.array_equal(expand(seed, 10, 64), full[:10])  # a prefix of the longer stream
    assert expand(seed, 0, 8).shape == (0,)


def test_prg_output_looks_uniform():
    values = expand(os.urandom(16), 100_000, 16)
    counts = np.bincount((values >> np.uint64(12)).astype(np.int64), minlength=16)
    chi2 = float(np.sum((counts - 6250) ** 2 / 6250))
    assert chi2 < 50  # 15 degrees of freedom; p < 1e-5 beyond this


@pytest.mark.parametrize("length", [0, 1000, 200_000])  # 200,000 words: past the shared 1 MiB of zeros
def test_a_keystream_sum_equals_the_sum_of_the_keystreams(length):
    seeds = [os.urandom(16) for _ in range(4)]
    summed = KeystreamSum(length)
    for k, seed in enumerate(seeds):
        summed.add(seed, subtract=k == 2)
    expected = np.zeros(length, np.uint64)
    for k, seed in enumerate(seeds):
        stream = expand(seed, length, 64)
        expected = expected - stream if k == 2 else expected + stream
    assert np.array_equal(summed.total, expected)
    with pytest.raises(SecAggError, match="16 bytes"):
        summed.add(bytes(15))
    with pytest.raises(SecAggError, match="mask length"):
        KeystreamSum(-1)


@pytest.mark.parametrize("args", [(bytes(15), 10, 8), (bytes(32), 10, 8), (bytes(16), -1, 8), (bytes(16), 10, 0),
                                  (bytes(16), 10, 65), ("x" * 16, 10, 8)])
def test_prg_refuses_bad_arguments(args):
    with pytest.raises(SecAggError):
        expand(*args)


def test_prg_is_fast():
    seed = os.urandom(16)
    expand(seed, 60_000, 40)
    start = time.perf_counter()
    for _ in range(10):
        expand(seed, 60_000, 40)
    assert (time.perf_counter() - start) / 10 < 0.02


# keys

def test_agreement_is_symmetric_and_keys_are_raw():
    a, b = keys.KeyPair.generate(), keys.KeyPair.generate()
    assert len(a.public_bytes()) == len(a.private_bytes()) == 32
    assert keys.agree(a.private, b.public_bytes()) == keys.agree(b.private_bytes(), a.public_bytes())
    assert keys.public_of(keys.load_private(a.private_bytes())) == a.public_bytes()


_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _library_refuses(public: bytes) -> bool:
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False


def test_the_small_order_blocklist_is_what_the_library_refuses():
    """Every blocklisted encoding (and with its ignored top bit set) is refused by X25519 itself; around
    them (small u, u near p and 2^255) and for random keys, the blocklist and the library agree."""
    p = 2**255 - 19
    listed = [bytes(e) for e in keys._SMALL_ORDER]
    listed += [e[:31] + bytes((e[31] | 0x80,)) for e in listed]
    assert all(_library_refuses(e) and keys.is_small_order(e) for e in listed)
    with pytest.raises(SecAggError, match="low-order"):
        keys.check_public(listed[-1])
    near = [u for base in (0, p, 2**255 - 64) for u in range(base, base + 64)] + [p - k for k in range(1, 40)]
    candidates = [(u % 2**256).to_bytes(32, "little") for u in near] + [os.urandom(32) for _ in range(2000)]
    disagree = [c.hex() for c in candidates if _library_refuses(c) != keys.is_small_order(c)]
    assert disagree == []


@pytest.mark.parametrize("peer", [bytes(31), bytes(33), bytes(32), LOW_ORDER, "k" * 32])
def test_agree_refuses_malformed_or_low_order_peer_keys(peer):
    with pytest.raises(SecAggError):
        keys.agree(keys.KeyPair.generate().private, peer)


def test_derive_key_binds_purpose_and_context():
    shared = os.urandom(32)
    base = keys.derive_key(shared, purpose=b"mask", context=b"r1", length=16)
    assert len(base) == 16 and base == keys.derive_key(shared, purpose=b"mask", context=b"r1", length=16)
    assert base != keys.derive_key(shared, purpose=b"channel", context=b"r1", length=16)
    assert base != keys.derive_key(shared, purpose=b"mask", context=b"r2", length=16)
    with pytest.raises(SecAggError):
        keys.derive_key(shared, purpose=b"a|b", context=b"", length=16)
    with pytest.raises(SecAggError):
        keys.derive_key(shared[:15], purpose=b"mask", context=b"", length=16)
    seeded = keys.derive_key(shared[:16], purpose=b"mask-key", context=b"", length=32)  # a 16-byte seed
    assert len(seeded) == 32 and seeded != keys.derive_key(shared[:16], purpose=b"mask", context=b"", length=32)


def test_mask_key_from_seed_is_deterministic_and_bound_to_round_and_participant():
    seed = os.urandom(16)
    key = keys.mask_key_from_seed(seed, round_id=b"r", index=3)
    public = keys.public_of(key)
    assert public == keys.public_of(keys.mask_key_from_seed(seed, round_id=b"r", index=3))
    assert public != keys.public_of(keys.mask_key_from_seed(seed, round_id=b"q", index=3))
    assert public != keys.public_of(keys.mask_key_from_seed(seed, round_id=b"r", index=4))
    assert public != keys.public_of(keys.mask_key_from_seed(os.urandom(16), round_id=b"r", index=3))
    other = keys.KeyPair.generate()
    assert keys.agree(key, other.public_bytes()) == keys.agree(other.private, public)  # a working X25519 key
    for bad in (dict(seed=seed[:15]), dict(seed=seed + seed), dict(seed="x" * 16), dict(index=-1),
                dict(index=True), dict(round_id=b"")):
        with pytest.raises(SecAggError):
            keys.mask_key_from_seed(**{"seed": seed, "round_id": b"r", "index": 3, **bad})


def test_seal_open_and_tampering():
    key, aad = os.urandom(32), b"context"
    sealed = keys.seal(key, b"secret", aad)
    assert len(sealed) == 12 + 6 + 16 and keys.open_sealed(key, sealed, aad) == b"secret"
    assert keys.seal(key, b"secret", aad) != sealed  # fresh nonce
    for bad in (sealed[:-1] + bytes([sealed[-1] ^ 1]), bytes([sealed[0] ^ 1]) + sealed[1:], sealed[:20]):
        with pytest.raises(SecAggError):
            keys.open_sealed(key, bad, aad)
    with pytest.raises(SecAggError):
        keys.open_sealed(key, sealed, b"other")
    with pytest.raises(SecAggError):
        keys.open_sealed(os.urandom(32), sealed, aad)


def test_sealed_share_message_is_bound_to_sender_receiver_and_round():
    key = os.urandom(32)
    b_share, key_share = os.urandom(16), os.urandom(16)
    sealed = keys.seal_shares(key, round_id=b"r", sender=3, receiver=5, b_share=b_share, key_share=key_share)
    assert keys.B_SHARE_BYTES == keys.KEY_SHARE_BYTES == 16  # one Shamir block each
    assert len(sealed) == keys.SEALED_SHARES_BYTES == 12 + 8 + 16 + 16 + 16
    assert keys.open_shares(key, sealed, round_id=b"r", sender=3, receiver=5) == (b_share, key_share)
    with pytest.raises(SecAggError, match="sizes"):
        keys.seal_shares(key, round_id=b"r", sender=3, receiver=5, b_share=b_share, key_share=bytes(32))
    for kwargs in (dict(round_id=b"q", sender=3, receiver=5), dict(round_id=b"r", sender=5, receiver=3),
                   dict(round_id=b"r", sender=3, receiver=6)):
        with pytest.raises(SecAggError):
            keys.open_shares(key, sealed, **kwargs)


# shamir

@pytest.mark.parametrize("size", [16, 32, 48])
def test_shamir_any_threshold_subset_recovers(size):
    secret = os.urandom(size)
    shares = split_secret(secret, threshold=3, num_shares=5)
    assert len(shares) == 5 and all(len(s) == size for s in shares)
    for subset in itertools.combinations(range(5), 3):
        assert combine_shares([(i + 1, shares[i]) for i in subset], threshold=3) == secret
    # More than threshold: exactly the first `threshold` are used.
    assert combine_shares([(i + 1, s) for i, s in enumerate(shares)], threshold=3) == secret


def test_shamir_too_few_shares():
    shares = split_secret(os.urandom(32), threshold=4, num_shares=6)
    with pytest.raises(SecAggError, match="too few"):
        combine_shares([(1, shares[0]), (2, shares[1]), (3, shares[2])], threshold=4)


def test_shamir_fewer_than_threshold_reveal_nothing_useful():
    secret = os.urandom(16)
    shares = split_secret(secret, threshold=3, num_shares=5)
    # Interpolating t-1 shares as if t-1 were the threshold gives an unrelated value.
    assert combine_shares([(1, shares[0]), (2, shares[1])], threshold=2) != secret


@pytest.mark.parametrize("call", [
    lambda: split_secret(b"short", threshold=2, num_shares=3),
    lambda: split_secret(b"", threshold=2, num_shares=3),
    lambda: split_secret(bytes(16), threshold=4, num_shares=3),
    lambda: split_secret(bytes(16), threshold=1, num_shares=3),
    lambda: combine_shares([(1, bytes(16)), (1, bytes(16))], threshold=2),
    lambda: combine_shares([(1, bytes(16)), (2, bytes(32))], threshold=2),
    lambda: combine_shares([(0, bytes(16)), (2, bytes(16))], threshold=2),
    lambda: combine_shares([(1, bytes(15)), (2, bytes(15))], threshold=2),
    lambda: combine_shares([(1, "x" * 16), (2, bytes(16))], threshold=2),
])
def test_shamir_validates(call):
    with pytest.raises(SecAggError):
        call()


# graph

@pytest.mark.parametrize("n, k", [(20, 2), (20, 8), (21, 12), (50, 18), (100, 20), (7, 6), (7, 10)])
def test_graph_is_k_regular_symmetric_and_connected(n, k):
    graph = neighbour_graph(n, k, b"seed")
    expected = min(k, n - 1)
    assert len(graph) == n
    for i, neighbours in enumerate(graph):
        assert len(neighbours) == len(set(neighbours)) == expected and i not in neighbours
        assert list(neighbours) == sorted(neighbours)
        assert all(i in graph[j] for j in neighbours)
    reached, frontier = {0}, [0]
    while frontier:
        frontier = [j for i in frontier for j in graph[i] if j not in reached]
        reached.update(frontier)
    assert reached == set(range(n))


def test_graph_is_seeded():
    assert neighbour_graph(40, 10, b"a") == neighbour_graph(40, 10, b"a")
    assert neighbour_graph(40, 10, b"a") != neighbour_graph(40, 10, b"b")
    assert neighbour_graph(40, 10, 7) == neighbour_graph(40, 10, 7) != neighbour_graph(40, 10, 8)


@pytest.mark.parametrize("n, k", [(2, 1), (3, 2), (5, 2), (17, 6), (64, 10), (65, 10), (1000, 54), (4097, 58)])
def test_one_devices_neighbours_are_its_entry_in_the_whole_graph(n, k):
    graph = neighbour_graph(n, k, b"round")
    for i in {0, 1, n // 2, n - 1}:
        assert neighbours_of(i, n, k, b"round") == graph[i]


@pytest.mark.parametrize("n", [2, 3, 15, 16, 17, 1000, 4096, 4097])
def test_the_ring_order_is_a_permutation_and_its_inverse(n):
    ring = graph_module._RingOrder(n, b"seed")
    order = [ring.at(p) for p in range(n)]
    assert ring.layout().tolist() == order  # the server's vectorized layout is the pointwise permutation
    assert sorted(order) == list(range(n))
    assert [ring.position_of(node) for node in order] == list(range(n))
    if n >= 1000:
        assert order != sorted(order) and sum(a < b for a, b in zip(order, order[1:])) < 0.6 * n  # shuffled


def test_a_devices_graph_work_does_not_grow_with_the_cohort(monkeypatch):
    """The hashes one device computes for its neighbours: about the same at 1,000 and 1,000,000."""
    calls = []
    real = graph_module.hashlib.sha256
    monkeypatch.setattr(graph_module.hashlib, "sha256", lambda data: calls.append(1) or real(data))
    counts = {}
    for n in (1000, 1_000_000):
        calls.clear()
        for index in range(20):
            neighbours_of(index * (n // 20), n, 54, b"s")
        counts[n] = len(calls) / 20
    assert counts[1_000_000] < 2 * counts[1000] < 2 * 55 * 6 * 8  # k + 1 points, 6 rounds, a few walks each


@pytest.mark.parametrize("args", [(1, 2, b""), (20, 3, b""), (20, 0, b""), (20, 2, -1), (20, 2, "s"), (20, True, b"")])
def test_graph_refuses(args):
    with pytest.raises(SecAggError):
        neighbour_graph(*args)


# degree and threshold

def _exact(n, *, gamma=Fraction(1, 50), delta=Fraction(1, 3), bits=40, eta=Fraction(1, 10**4)):
    """choose_degree_and_threshold's rule in exact rational arithmetic, every candidate k in turn."""
    def below(k, p):  # below[t] = P(Bin(k, p) < t), t = 0..k+1
        return list(itertools.accumulate((math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(k + 1)),
                                         initial=Fraction(0)))

    def t_correct(k):
        return max(t for t, head in enumerate(below(k, 1 - delta)) if n * head <= eta)

    for k in [*range(2, n - 1, 2), n - 1]:
        head = below(k + 1, gamma)
        t_privacy = next((t for t in range(2, k + 2) if n * (1 - head[t]) <= Fraction(1, 2**bits)), k + 2)
        if t_privacy <= t_correct(k):
            return k, t_privacy
    return n - 1, max(2, min(n, t_correct(n - 1)))


def test_degree_and_threshold_defaults():
    assert choose_degree_and_threshold(100) == (48, 16)
    assert choose_degree_and_threshold(1000) == (54, 17)
    assert choose_degree_and_threshold(10_000) == (58, 18)
    assert [choose_degree_and_threshold(n) for n in (2, 3, 5, 20, 30)] == [(1, 2), (2, 2), (4, 2), (19, 3), (29, 7)]
    for n in (46, 60, 100, 1000, 10_000):  # large enough: the full privacy margin
        assert privacy_bits_achieved(n, *choose_degree_and_threshold(n), 0.02) >= 40
    for n in range(2, 300, 3):
        k, t = choose_degree_and_threshold(n)
        assert (k == n - 1 or k % 2 == 0) and 2 <= t <= k + 1


@pytest.mark.parametrize("n", [2, 4, 7, 20, 45, 46, 47, 60, 101])
def test_degree_and_threshold_match_exact_arithmetic(n):
    assert choose_degree_and_threshold(n) == _exact(n)


@pytest.mark.parametrize("delta, gamma", [(Fraction(1, 2), Fraction(1, 10)), (Fraction(1, 10), Fraction(0)),
                                          (Fraction(3, 5), Fraction(3, 10)), (Fraction(9, 10), Fraction(1, 5))])
@pytest.mark.parametrize("n", [9, 30, 200])
def test_degree_and_threshold_other_models(n, delta, gamma):
    chosen = choose_degree_and_threshold(n, dropout_tolerance=float(delta), corrupt_fraction=float(gamma))
    assert chosen == _exact(n, gamma=gamma, delta=delta)


def test_degree_and_threshold_are_fast_and_grow_slowly():
    start = time.perf_counter()
    k, t = choose_degree_and_threshold(10_000)
    assert time.perf_counter() - start < 0.02
    assert choose_degree_and_threshold(1 << 20) == (70, 21)  # O(log n)
    assert choose_degree_and_threshold(1000, dropout_tolerance=0.5)[0] > k  # more dropout, larger k
    assert choose_degree_and_threshold(1000, privacy_bits=80)[1] > 17
    assert choose_degree_and_threshold(1000, corrupt_fraction=0.0) == (18, 2)  # nobody to collude with


def test_privacy_bits_achieved():
    assert privacy_bits_achieved(100, 48, 16, 0.02) == pytest.approx(42.96, abs=0.01)
    assert privacy_bits_achieved(100, 48, 16, 0.0) == math.inf
    assert privacy_bits_achieved(20, 19, 3, 0.02) == pytest.approx(2.82, abs=0.01)  # small cohort: little margin
    assert privacy_bits_achieved(100, 48, 1, 0.02) == pytest.approx(-math.log2(100 * (1 - 0.98**49)))
    assert privacy_bits_achieved(100, 48, 17, 0.02) > privacy_bits_achieved(100, 48, 16, 0.02)


@pytest.mark.parametrize("call", [
    lambda: choose_degree_and_threshold(1),
    lambda: choose_degree_and_threshold(100.0),
    lambda: choose_degree_and_threshold(100, dropout_tolerance=1.0),
    lambda: choose_degree_and_threshold(100, dropout_tolerance=-0.1),
    lambda: choose_degree_and_threshold(100, corrupt_fraction=1.0),
    lambda: choose_degree_and_threshold(100, corrupt_fraction=math.nan),
    lambda: choose_degree_and_threshold(100, privacy_bits=0),
    lambda: choose_degree_and_threshold(100, privacy_bits=True),
    lambda: choose_degree_and_threshold(100, failure_probability=0.0),
    lambda: choose_degree_and_threshold(100, failure_probability=1.0),
    lambda: privacy_bits_achieved(100, 100, 5, 0.02),
    lambda: privacy_bits_achieved(100, 48, 50, 0.02),
    lambda: privacy_bits_achieved(100, 48, 16, -0.5),
])
def test_degree_and_threshold_refuse(call):
    with pytest.raises(SecAggError):
        call()


# params

def _params(**changes):
    fields = dict(round_id=b"r", num_participants=20, degree=8, threshold=5,
                  fixed_point=FixedPoint(32, 16), vector_length=10, graph_seed=b"g")
    fields.update(changes)
    return SecAggParams(**fields)


def test_params_defaults_and_neighbourhood():
    params = SecAggParams.for_round(round_id=b"r", num_participants=20, fixed_point=FixedPoint(32, 16),
                                    vector_length=10, graph_seed=b"g")
    assert (params.degree, params.threshold) == (19, 3) == choose_degree_and_threshold(20)
    assert params.neighbourhood(3) == tuple(sorted((3, *params.graph[3])))
    model = dict(dropout_tolerance=0.2, corrupt_fraction=0.05, privacy_bits=30, failure_probability=1e-3)
    params = SecAggParams.for_round(round_id=b"r", num_participants=500, fixed_point=FixedPoint(32, 16),
                                    vector_length=10, graph_seed=b"g", **model)
    assert (params.degree, params.threshold) == choose_degree_and_threshold(500, **model)
    with pytest.raises(SecAggError, match="dropout_tolerance"):
        SecAggParams.for_round(round_id=b"r", num_participants=500, fixed_point=FixedPoint(32, 16),
                               vector_length=10, graph_seed=b"g", dropout_tolerance=1.5)


def test_params_accept_any_threshold_from_two_to_the_neighbourhood():
    for t in (2, 3, 9):  # no majority needed (degree 8: neighbourhoods of 9)
        assert _params(threshold=t).threshold == t


@pytest.mark.parametrize("changes", [dict(round_id=b""), dict(round_id="r"), dict(graph_seed=bytes(65)),
                                     dict(num_participants=1), dict(degree=7), dict(degree=20), dict(threshold=1),
                                     dict(threshold=10), dict(threshold=True), dict(threshold=5.0), dict(vector_length=0),
                                     dict(fixed_point=(32, 16)),
                                     dict(num_participants=True)])
def test_params_validate(changes):
    with pytest.raises(SecAggError):
        _params(**changes)
