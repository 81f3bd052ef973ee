"""Who shares keys and masks with whom: SecAgg+'s sparse random neighbour graph (Bell et al. 2020).

Plain SecAgg masks every pair of the n participants (O(n) work and O(n) shares per device); SecAgg+
only masks along the edges of a random k-regular graph with k = O(log n). The graph here is the
Harary graph H(k, n) laid over a seeded random permutation: participants sit on a ring in a random
order and each is joined to the k/2 nearest on either side. Every device and the server recompute it
from the round's seed, so the order comes from SHA-256 (not numpy, whose generator streams may
change between versions): all parties must get the very same graph. The order is a permutation that
can be evaluated at one point (`_RingOrder`), so a device computes its own k neighbours only: its
cost does not grow with the cohort.

The degree k and Shamir threshold t come from `choose_degree_and_threshold`: Bell et al.'s choice of
the smallest k for which, with high probability, no neighbourhood holds t server colluders (privacy)
and every neighbourhood keeps t survivors (the sum can be unmasked).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from secagg.errors import SecAggError

MAX_PARTICIPANTS = 1 << 20
# The default threat model (Bell et al.'s delta, gamma, sigma, eta): see choose_degree_and_threshold.
DEFAULT_DROPOUT_TOLERANCE = 1 / 3
DEFAULT_CORRUPT_FRACTION = 0.02
DEFAULT_PRIVACY_BITS = 40
DEFAULT_FAILURE_PROBABILITY = 1e-4


def _seed_bytes(seed: bytes | int) -> bytes:
    if isinstance(seed, bool):
        raise SecAggError("graph seed must be bytes or a non-negative int")
    if isinstance(seed, int):
        if seed < 0:
            raise SecAggError("graph seed must be bytes or a non-negative int")
        return b"int:" + seed.to_bytes((seed.bit_length() + 7) // 8 or 1, "big")
    if isinstance(seed, (bytes, bytearray)):
        return b"bytes:" + bytes(seed)
    raise SecAggError("graph seed must be bytes or a non-negative int")


class _RingOrder:
    """A seeded pseudorandom permutation of 0..n-1, evaluated one point at a time.

    A balanced Feistel network over 2h bits (the smallest 4^h >= n), round function SHA-256, with cycle
    walking down to 0..n-1 (Black and Rogaway 2002): `at(p)` is who sits at ring position p and
    `position_of(i)` its inverse, each a few dozen hashes whatever n is. So a device finds its own
    neighbours without laying out the whole ring, and the server lays out the ring in O(n).
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: bytes) -> None:
        self.n = n
        self.half_bits = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self._half_mask = (1 << self.half_bits) - 1
        self._prefix = b"fedrec-secagg-v2|ring|" + seed + b"|"

    def _round(self, number: int, value: int) -> int:
        digest = hashlib.sha256(self._prefix + bytes((number,)) + value.to_bytes(8, "big")).digest()
        return int.from_bytes(digest[:8], "big") & self._half_mask

    def _forward(self, value: int) -> int:
        left, right = value >> self.half_bits, value & self._half_mask
        for number in range(self.ROUNDS):
            left, right = right, left ^ self._round(number, right)
        return (left << self.half_bits) | right

    def _backward(self, value: int) -> int:
        left, right = value >> self.half_bits, value & self._half_mask
        for number in reversed(range(self.ROUNDS)):
            left, right = right ^ self._round(number, left), left
        return (left << self.half_bits) | right

    def at(self, position: int) -> int:
        value = self._forward(position)
        while value >= self.n:  # cycle walking: stays in 0..n-1 and stays a permutation
            value = self._forward(value)
        return value

    def layout(self) -> np.ndarray:
        """`at(p)` for every position p at once, in array passes: the server's whole ring.

        The round function only ever sees a half of `half_bits` bits, so its 2^half_bits ~ sqrt(n)
        values per round are hashed once into a table, and all n points run through the Feistel network
        (and the cycle walk) as arrays.
        """
        size = 1 << self.half_bits
        tables = [np.array([self._round(number, value) for value in range(size)], np.int64)
                  for number in range(self.ROUNDS)]

        def forward(values: np.ndarray) -> np.ndarray:
            left, right = values >> self.half_bits, values & self._half_mask
            for table in tables:
                left, right = right, left ^ table[right]
            return (left << self.half_bits) | right

        order = forward(np.arange(self.n, dtype=np.int64))
        outside = np.flatnonzero(order >= self.n)
        while outside.size:
            order[outside] = forward(order[outside])
            outside = outside[order[outside] >= self.n]
        return order

    def position_of(self, node: int) -> int:
        value = self._backward(node)
        while value >= self.n:
            value = self._backward(value)
        return value


def _check_size(num_participants: int) -> None:
    if isinstance(num_participants, bool) or not isinstance(num_participants, int) \
            or not 2 <= num_participants <= MAX_PARTICIPANTS:
        raise SecAggError(f"num_participants must be an integer in 2..{MAX_PARTICIPANTS}, got {num_participants!r}")


def _check_degree(n: int, degree: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise SecAggError(f"degree must be a positive integer, got {degree!r}")
    if degree < n - 1 and degree % 2:
        raise SecAggError(f"degree must be even when smaller than n - 1 (n={n}), got {degree}")


def neighbours_of(index: int, num_participants: int, degree: int, seed: bytes | int) -> tuple[int, ...]:
    """The sorted neighbours of participant `index` in the round's graph, in O(degree) whatever n is."""
    _check_size(num_participants)
    n = num_participants
    _check_degree(n, degree)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise SecAggError(f"index must be an integer in 0..{n - 1}, got {index!r}")
    if degree >= n - 1:
        return tuple(j for j in range(n) if j != index)
    ring = _RingOrder(n, _seed_bytes(seed))
    return _ring_neighbours(ring.position_of(index), ring.at, n, degree)


def _ring_neighbours(position: int, at: Callable[[int], int], n: int, degree: int) -> tuple[int, ...]:
    """Who sits within degree/2 ring positions of `position` (`at(p)`: who sits at p), sorted.

    degree/2 < (n - 1)/2, so the two sides never meet and every node gets exactly `degree`."""
    half = degree // 2
    return tuple(sorted(at((position + step) % n) for step in range(-half, half + 1) if step))


def neighbour_graph(num_participants: int, degree: int, seed: bytes | int) -> list[tuple[int, ...]]:
    """Entry i: the sorted neighbours of participant i (0..n-1), the same as `neighbours_of(i, ...)`.

    The Harary graph H(k, n) on a ring in pseudorandom order (`_RingOrder`): each participant is
    joined to the k/2 nearest on either side. Complete graph when degree >= n - 1.
    """
    _check_size(num_participants)
    n = num_participants
    _check_degree(n, degree)
    if degree >= n - 1:
        return [tuple(j for j in range(n) if j != i) for i in range(n)]
    order = _RingOrder(n, _seed_bytes(seed)).layout()
    position_of = np.empty(n, np.int64)
    position_of[order] = np.arange(n)
    half = degree // 2
    steps = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
    rows = np.sort(order[(position_of[:, None] + steps[None, :]) % n], axis=1)  # as `_ring_neighbours`, for all
    return list(map(tuple, rows.tolist()))


# --- Choosing k and t (Bell et al. 2020, sec. 4 and Appendix: parameters from a binomial model) ---
#
# Model: each participant is corrupted (colludes with the server) independently with probability gamma
# and drops out independently with probability delta. The server is semi-honest and there is no
# consistency-check round, so privacy only needs that no neighbourhood (k + 1 holders of a secret)
# holds t corrupted members, and correctness only needs that every neighbourhood keeps t survivors.


def _log_pmf(trials: int, p: float) -> np.ndarray:
    """log P(Binomial(trials, p) = i) for i = 0..trials: log space, so large trials neither overflow nor underflow."""
    if p <= 0.0 or p >= 1.0:
        logs = np.full(trials + 1, -np.inf)
        logs[0 if p <= 0.0 else trials] = 0.0
        return logs
    i = np.arange(trials, dtype=np.float64)
    steps = np.log((trials - i) / (i + 1)) + (math.log(p) - math.log1p(-p))  # log pmf(i + 1) / pmf(i)
    return np.concatenate(([trials * math.log1p(-p)], trials * math.log1p(-p) + np.cumsum(steps)))


def _privacy_threshold(n: int, k: int, gamma: float, log_budget: float) -> int:
    """The smallest t >= 2 with n * P(Binomial(k + 1, gamma) >= t) <= 2^-privacy_bits; k + 2 if none."""
    upper = np.logaddexp.accumulate(_log_pmf(k + 1, gamma)[::-1])[::-1]  # upper[t] = log P(X >= t)
    fine = np.flatnonzero(math.log(n) + upper <= log_budget)  # a suffix: the tail shrinks with t
    return max(2, int(fine[0])) if fine.size else k + 2


def _correct_threshold(n: int, k: int, delta: float, eta: float) -> int:
    """The largest t with n * P(Binomial(k, 1 - delta) < t) <= eta (k neighbours: the owner may be gone); 0 if none."""
    lower = np.logaddexp.accumulate(_log_pmf(k, 1.0 - delta))  # lower[t - 1] = log P(X < t)
    failing = np.flatnonzero(math.log(n) + lower > math.log(eta))  # a suffix: the head grows with t
    return int(failing[0]) if failing.size else k + 1


def _check_model(corrupt_fraction: float, dropout_tolerance: float | None = None, privacy_bits: float | None = None,
                 failure_probability: float | None = None) -> None:
    def real(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    if not real(corrupt_fraction) or not 0.0 <= corrupt_fraction < 1.0:
        raise SecAggError(f"corrupt_fraction must be a number in [0, 1), got {corrupt_fraction!r}")
    if dropout_tolerance is not None and (not real(dropout_tolerance) or not 0.0 <= dropout_tolerance < 1.0):
        raise SecAggError(f"dropout_tolerance must be a number in [0, 1), got {dropout_tolerance!r}")
    if privacy_bits is not None and (not real(privacy_bits) or not 0 < privacy_bits <= 256):
        raise SecAggError(f"privacy_bits must be a number in (0, 256], got {privacy_bits!r}")
    if failure_probability is not None and (not real(failure_probability) or not 0.0 < failure_probability < 1.0):
        raise SecAggError(f"failure_probability must be a number in (0, 1), got {failure_probability!r}")


def choose_degree_and_threshold(num_participants: int, *, dropout_tolerance: float = DEFAULT_DROPOUT_TOLERANCE,
                                corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION,
                                privacy_bits: int = DEFAULT_PRIVACY_BITS,
                                failure_probability: float = DEFAULT_FAILURE_PROBABILITY) -> tuple[int, int]:
    """(k, t): the smallest degree whose neighbourhoods are both private and recoverable, as in Bell et al. 2020.

    Threat model: a semi-honest server (no consistency-check round) colluding with a fraction gamma =
    `corrupt_fraction` of the clients; a fraction delta = `dropout_tolerance` may drop out, each client
    independently. For each even k (and k = n - 1, the complete graph) from small upward:
    - t_privacy(k): smallest t >= 2 with n * P(Bin(k + 1, gamma) >= t) <= 2^-privacy_bits: by the union
      bound, no neighbourhood holds t corrupted members, so the server and its colluders cannot rebuild
      any honest client's self-mask seed or mask key from shares alone.
    - t_correct(k): largest t with n * P(Bin(k, 1 - delta) < t) <= failure_probability: every
      neighbourhood keeps t survivors to answer unmask, even when its owner dropped.
    The first k with t_privacy(k) <= t_correct(k) is returned with t = t_privacy(k) (the smallest t
    keeps Shamir reconstruction, quadratic in t, cheap). Tails are exact binomial sums in log space.
    The defaults give (k, t) = (48, 16) at n = 100, (54, 17) at 1,000, (58, 18) at 10,000: k grows
    like (log n + privacy_bits) / (1 - delta - gamma)^2, not with n. Small cohorts can have no such
    k: then the complete graph with t = max(2, min(n, t_correct(n - 1))) is returned, preferring
    survival of the configured dropout over the privacy margin; `privacy_bits_achieved` reports what
    is left (n = 20: t = 3, about 3 bits).
    """
    _check_size(num_participants)
    _check_model(corrupt_fraction, dropout_tolerance, privacy_bits, failure_probability)
    n = num_participants
    log_budget = -privacy_bits * math.log(2)
    k = min(2, n - 1)
    while corrupt_fraction < 1.0 - dropout_tolerance:  # else t_privacy outgrows t_correct for every k
        t = _privacy_threshold(n, k, corrupt_fraction, log_budget)
        gap = t - _correct_threshold(n, k, dropout_tolerance, failure_probability)  # t_correct <= k
        if gap <= 0:
            return k, t
        if k == n - 1:
            break
        # Both thresholds never fall and each rises by at most 2 when k does, so the gap closes by at
        # most 2 per step: every k skipped here fails too, and the first k that works is still found.
        k = min(k + 2 * math.ceil(gap / 2), n - 1)
    k = n - 1
    return k, max(2, min(k + 1, _correct_threshold(n, k, dropout_tolerance, failure_probability)))


def privacy_bits_achieved(num_participants: int, degree: int, threshold: int, corrupt_fraction: float) -> float:
    """-log2(n * P(Bin(k + 1, gamma) >= t)): the privacy margin of (k, t) in `choose_degree_and_threshold`'s model.

    math.inf when no neighbourhood can hold t corrupted members (gamma = 0); may be negative (no margin).
    """
    _check_size(num_participants)
    _check_model(corrupt_fraction)
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= num_participants - 1:
        raise SecAggError(f"degree must be an integer in 1..{num_participants - 1}, got {degree!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= degree + 1:
        raise SecAggError(f"threshold must be an integer in 1..{degree + 1}, got {threshold!r}")
    tail = float(np.logaddexp.reduce(_log_pmf(degree + 1, corrupt_fraction)[threshold:]))
    return math.inf if tail == -math.inf else -(math.log(num_participants) + tail) / math.log(2)
