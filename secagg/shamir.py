"""Shamir secret sharing of secrets longer than one GF(2^128) block.

pycryptodome's `Shamir` shares one 16-byte block; a longer secret (a 32-byte X25519 key) is cut into
blocks, each shared with its own random polynomial at the same x-coordinates, and a share is the
concatenation of one holder's block shares. Holders are numbered x = 1..num_shares.

Reconstructing many secrets (`ShamirCombiner`): in GF(2^128) the secret is linear in the share values,
secret = sum_j lambda_j * y_j, and the Lagrange coefficients lambda_j depend only on the x-coordinates
X = (x_1..x_t) used. `Shamir.combine` recomputes them for every secret, and that is nearly all of its
cost: per share, 2(t - 1) products of small elements, one inversion and two full 128-bit products
(pycryptodome's `_Element.__mul__` is a pure-Python loop over the bits of the smaller factor, ~0.4 ms
for a full product, so one combine at t = 17 takes ~20 ms). The combiner obtains the lambda_j of an X
from pycryptodome itself and reuses them for every secret with that X; only field arithmetic of the
library's own `_Element` class is used, never ours. See `ShamirCombiner` for the details.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

from Crypto.Protocol.SecretSharing import Shamir, _Element

from secagg.errors import SecAggError

BLOCK = 16
MAX_SHARES = 1024  # neighbourhoods are O(log n); this only bounds hostile input
MAX_SECRET_BYTES = 1024


def split_secret(secret: bytes, *, threshold: int, num_shares: int) -> list[bytes]:
    """`num_shares` shares (share i is for x = i + 1) of which any `threshold` recover `secret`."""
    if not isinstance(secret, (bytes, bytearray)) or not secret or len(secret) % BLOCK \
            or len(secret) > MAX_SECRET_BYTES:
        raise SecAggError(f"a secret must be a non-empty multiple of {BLOCK} bytes, at most {MAX_SECRET_BYTES}")
    for name, value in (("threshold", threshold), ("num_shares", num_shares)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SecAggError(f"{name} must be an integer, got {value!r}")
    if not 2 <= threshold <= num_shares <= MAX_SHARES:
        raise SecAggError(f"need 2 <= threshold <= num_shares <= {MAX_SHARES}, got {threshold}, {num_shares}")
    per_block = [Shamir.split(threshold, num_shares, bytes(secret[i:i + BLOCK]), ssss=False)
                 for i in range(0, len(secret), BLOCK)]
    return [b"".join(block[holder][1] for block in per_block) for holder in range(num_shares)]


def _check_shares(shares: Sequence[tuple[int, bytes]], threshold: int) -> int:
    """Validate (x, share) pairs as `combine_shares` does; the share length."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= MAX_SHARES:
        raise SecAggError(f"threshold must be an integer in 2..{MAX_SHARES}, got {threshold!r}")
    if len(shares) < threshold:
        raise SecAggError(f"too few shares: {len(shares)} of the {threshold} needed")
    seen: set[int] = set()
    length = None
    for item in shares:
        if not isinstance(item, tuple) or len(item) != 2:
            raise SecAggError("a share must be an (x, bytes) pair")
        x, share = item
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SHARES:
            raise SecAggError(f"share x-coordinate must be an integer in 1..{MAX_SHARES}, got {x!r}")
        if x in seen:
            raise SecAggError(f"two shares with x-coordinate {x}")
        seen.add(x)
        if not isinstance(share, (bytes, bytearray)) or not share or len(share) % BLOCK \
                or len(share) > MAX_SECRET_BYTES:
            raise SecAggError(f"a share must be a non-empty multiple of {BLOCK} bytes")
        if length is not None and len(share) != length:
            raise SecAggError("shares of different lengths")
        length = len(share)
    assert length is not None
    return length


def combine_shares(shares: Sequence[tuple[int, bytes]], *, threshold: int) -> bytes:
    """The secret from (x, share) pairs: all are validated, exactly the first `threshold` are used."""
    length = _check_shares(shares, threshold)
    used = shares[:threshold]
    return b"".join(
        Shamir.combine([(x, bytes(share[i:i + BLOCK])) for x, share in used], ssss=False)
        for i in range(0, length, BLOCK))


# --- many secrets: Lagrange coefficients computed once per set of x-coordinates ---

_log = logging.getLogger(__name__)
_NIBBLES = 2 * BLOCK  # a block is 32 nibbles of 4 bits
_ZERO_BLOCK = bytes(BLOCK)
_ONE_BLOCK = (1).to_bytes(BLOCK, "big")  # the field's 1 as `Shamir` encodes elements (`_Element(bytes)` is big-endian)


@functools.lru_cache(maxsize=4096)
def lagrange_coefficients(xs: tuple[int, ...]) -> tuple[bytes, ...]:
    """lambda_j (16-byte encodings) with secret = sum_j lambda_j * y_j for shares at x-coordinates `xs`.

    Computed by pycryptodome itself: `Shamir.combine` is linear in the share values, so lambda_j is
    the "secret" it combines from y_j = 1 and y_m = 0 (m != j). Cached: they depend on `xs` only.
    """
    return tuple(
        Shamir.combine([(x, _ONE_BLOCK if m == j else _ZERO_BLOCK) for m, x in enumerate(xs)], ssss=False)
        for j in range(len(xs)))


class _Multiplier:
    """Multiplication by one fixed element c (a lambda_j), by table look-up, with the library's elements.

    By distributivity, c * y = sum_k c * (nibble_k(y) * x^(4k)) over the 32 nibbles of y's 128-bit
    encoding (bit i of the encoding is the coefficient of x^i, and the sum of two elements is the XOR
    of their encodings: that is `_Element.__add__`). The table holds c * (v * x^(4k)) for every
    nibble position k and value v in 0..15, built from c * x^i (i = 0..127, each the previous one
    times the element x = `_Element(2)`, a library product) and sums of those (`+`). A product then
    costs 32 look-ups and additions instead of ~128 iterations of `_Element.__mul__`'s loop.
    """

    def __init__(self, factor: _Element) -> None:
        x = _Element(2)
        powers = [factor]
        for _ in range(8 * BLOCK - 1):
            powers.append(powers[-1] * x)
        zero = _Element(0)
        self._tables: list[list[_Element]] = []
        for k in range(_NIBBLES):
            table = [zero] * 16
            for v in range(1, 16):
                low = (v & -v).bit_length() - 1
                table[v] = table[v & (v - 1)] + powers[4 * k + low]
            self._tables.append(table)

    def times(self, encoded: bytes, into: _Element) -> _Element:
        """into + factor * _Element(encoded)."""
        value = int.from_bytes(encoded, "big")
        for table in self._tables:
            into = into + table[value & 15]
            value >>= 4
        return into


class ShamirCombiner:
    """`combine_shares` for many secrets, sharing the Lagrange coefficients of each set of x-coordinates.

    `combine_many(jobs)` gives exactly `[combine_shares(job, threshold=t) for job in jobs]` (same
    validation, the first t shares of each job used), but groups the jobs by the x-coordinates X of
    those t shares. A group of at least `min_batch` jobs is reconstructed as sum_j lambda_j * y_j:
    lambda_j from `lagrange_coefficients(X)` (pycryptodome's `Shamir.combine`, t calls on unit
    vectors), multiplied by the share blocks through a `_Multiplier` table, summed with
    `_Element.__add__`. Smaller groups go through `combine_shares` (or the `direct` callable given to
    `combine_many`, e.g. to run them on a process pool): for one secret, obtaining its lambda_j costs
    more than a plain combine. Each table is checked against one library product before it is used
    (a check that fails sends the group to the plain path and logs an error).

    Costs at t = 17 on a 2-core test machine: plain combine ~20 ms per secret; a new X ~0.25 s
    (lambda_j ~0.21 s, tables and check ~0.04 s), then ~0.4 ms per secret and 16-byte block.
    So the combiner pays when many secrets share X: with no dropout every secret uses X = 1..t
    (callers should pick each secret's t smallest x-coordinates); with many dropouts the X differ and
    nearly everything takes the plain path.
    """

    def __init__(self, threshold: int, *, min_batch: int | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= MAX_SHARES:
            raise SecAggError(f"threshold must be an integer in 2..{MAX_SHARES}, got {threshold!r}")
        if min_batch is None:
            min_batch = default_min_batch(threshold)
        if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 1:
            raise SecAggError(f"min_batch must be a positive integer, got {min_batch!r}")
        self.threshold = threshold
        self.min_batch = min_batch
        self._multipliers: dict[tuple[int, ...], list[_Multiplier] | None] = {}

    def _multipliers_for(self, xs: tuple[int, ...]) -> list[_Multiplier] | None:
        """One `_Multiplier` per lambda_j of `xs`, or None if the self-check failed."""
        if xs not in self._multipliers:
            multipliers: list[_Multiplier] = []
            probe = os.urandom(BLOCK)
            for coefficient in lagrange_coefficients(xs):
                factor = _Element(coefficient)
                multiplier = _Multiplier(factor)
                if multiplier.times(probe, _Element(0)) != factor * _Element(probe):
                    _log.error("table multiplication disagrees with pycryptodome's _Element product "
                               "(library changed?); using Shamir.combine for x-coordinates %s", xs)
                    break
                multipliers.append(multiplier)
            else:
                self._multipliers[xs] = multipliers
                return multipliers
            self._multipliers[xs] = None
        return self._multipliers[xs]

    def combine_many(self, jobs: Sequence[Sequence[tuple[int, bytes]]], *,
                     direct: Callable[[list[Sequence[tuple[int, bytes]]]], list[bytes]] | None = None
                     ) -> list[bytes]:
        """The secret of each job (a sequence of (x, share) pairs), in order; SecAggError as `combine_shares`.

        `direct(jobs)` reconstructs the jobs left to the plain path, in order (default: `combine_shares`).
        Every job is validated before any work is done.
        """
        t = self.threshold
        lengths = [_check_shares(job, t) for job in jobs]
        groups: dict[tuple[int, ...], list[int]] = {}
        for number, job in enumerate(jobs):
            groups.setdefault(tuple(sorted(x for x, _ in job[:t])), []).append(number)
        results: list[bytes | None] = [None] * len(jobs)
        plain: list[int] = []
        for xs, members in groups.items():
            multipliers = self._multipliers_for(xs) if len(members) >= self.min_batch else None
            if multipliers is None:
                plain.extend(members)
                continue
            for number in members:
                shares = dict(jobs[number][:t])
                blocks = []
                for i in range(0, lengths[number], BLOCK):
                    total = _Element(0)
                    for x, multiplier in zip(xs, multipliers):
                        total = multiplier.times(bytes(shares[x][i:i + BLOCK]), total)
                    blocks.append(total.encode())
                results[number] = b"".join(blocks)
        if plain:
            plain.sort()
            if direct is None:
                secrets = [combine_shares(jobs[number], threshold=t) for number in plain]
            else:
                secrets = list(direct([jobs[number] for number in plain]))
                if len(secrets) != len(plain):
                    raise SecAggError("the plain combine returned the wrong number of secrets")
            for number, secret in zip(plain, secrets):
                results[number] = secret
        return results  # type: ignore[return-value]  # every slot was filled above (checked counts)


def default_min_batch(threshold: int) -> int:
    """Fewest secrets sharing one set of x-coordinates for which `ShamirCombiner` builds tables.

    A new set costs t combines of unit vectors (each ~half a plain combine: their zero shares skip
    the full products) plus the tables, against one plain combine saved per secret. Measured
    break-even: ~6 secrets at t = 2 (the tables dominate), 5 at t = 5, 7 at t = 10, 10 at t = 17,
    17 at t = 30.
    """
    return max(5, (3 * threshold) // 5 + 1)
