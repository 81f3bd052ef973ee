"""GF(2^128) arithmetic on many elements at once, in numpy, for reconstructing many Shamir secrets.

Why this exists: pycryptodome's `Shamir.combine` (which makes and checks our shares) multiplies field
elements in a pure-Python loop, ~0.4 ms a product, so one combine at t = 17 costs ~20 ms, and a round
with dropouts needs one combine per device with its own x-coordinates: 12-24 s at 1,000 devices.
Here the same field (pycryptodome's: x^128 + x^7 + x^2 + x + 1, bit i of the 128-bit big-endian
encoding is the coefficient of x^i) is computed with vectorized shift-and-xor over arrays of
elements, so a whole round's Lagrange interpolation is a few dozen array passes.

This is the server's reconstruction of secrets the protocol reveals to it anyway (dropped devices' mask
keys, survivors' self-mask seeds), so timing does not matter. Sharing stays with pycryptodome, and
`check_against_library` compares a random product with pycryptodome's `_Element` before the first
use in each process: a mismatch is an error, never a wrong sum.

An element array is uint64 of shape (..., 2): [..., 0] the high word (bits 64..127), [..., 1] the low.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from Crypto.Protocol.SecretSharing import _Element

from secagg.errors import SecAggError

BLOCK = 16
_REDUCTION = np.uint64(0x87)  # x^7 + x^2 + x + 1: x^128 folds onto these
_ONE = np.uint64(1)
_TOP = np.uint64(63)


def from_blocks(data: bytes | bytearray | memoryview, count: int) -> np.ndarray:
    """`count` 16-byte big-endian encodings, concatenated, as an element array of shape (count, 2)."""
    return np.frombuffer(bytes(data), dtype=">u8", count=2 * count).astype(np.uint64).reshape(count, 2)


def to_blocks(elements: np.ndarray) -> list[bytes]:
    """The 16-byte big-endian encoding of each element of a (count, 2) array."""
    raw = np.ascontiguousarray(elements, dtype=">u8").tobytes()
    return [raw[i:i + BLOCK] for i in range(0, len(raw), BLOCK)]


def from_ints(values: np.ndarray) -> np.ndarray:
    """Small field elements (ints < 2^64, e.g. x-coordinates) as an element array."""
    values = np.asarray(values, dtype=np.uint64)
    out = np.zeros(values.shape + (2,), np.uint64)
    out[..., 1] = values
    return out


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise product a * b of two element arrays (broadcast), in pycryptodome's field.

    Schoolbook over b's 128 bits, low bit first: z ^= v where the bit is set, v = v * x (a shift by one
    and, when x^128 falls out, an xor of the reduction polynomial).
    """
    a, b = np.broadcast_arrays(a, b)
    v_hi, v_lo = a[..., 0].copy(), a[..., 1].copy()
    z_hi, z_lo = np.zeros_like(v_hi), np.zeros_like(v_lo)
    mask = np.empty_like(v_lo)
    high_bits = int(b[..., 0].max()).bit_length() if b.size else 0
    low_bits = 64 if high_bits else (int(b[..., 1].max()).bit_length() if b.size else 0)
    for word, bits in ((b[..., 1], low_bits), (b[..., 0], high_bits)):  # small multipliers stop early
        word = word.copy()
        for _ in range(bits):
            np.bitwise_and(word, _ONE, out=mask)
            np.negative(mask, out=mask)  # all ones where the bit is set
            z_hi ^= v_hi & mask
            z_lo ^= v_lo & mask
            carry = v_hi >> _TOP
            v_hi <<= _ONE
            v_hi |= v_lo >> _TOP
            v_lo <<= _ONE
            v_lo ^= carry * _REDUCTION
            word >>= _ONE
    return np.stack([z_hi, z_lo], axis=-1)


def product(elements: np.ndarray, axis: int) -> np.ndarray:
    """The product of the elements along `axis` (not the last), by pairwise halving."""
    elements = np.moveaxis(elements, axis, 0)
    if elements.shape[0] == 0:
        return from_ints(np.ones(elements.shape[1:-1], np.uint64))
    while elements.shape[0] > 1:
        half = elements.shape[0] // 2
        paired = multiply(elements[:half], elements[half:2 * half])
        elements = np.concatenate([paired, elements[2 * half:]], axis=0) if elements.shape[0] % 2 else paired
    return elements[0]


def xor_sum(elements: np.ndarray, axis: int) -> np.ndarray:
    """The field sum (xor) along `axis`."""
    return np.bitwise_xor.reduce(elements, axis=axis)


@functools.lru_cache(maxsize=4096)
def _inverse_of_small(value: int) -> tuple[int, int]:
    """pycryptodome's inverse of the field element `value` (a small int), as (high, low) words."""
    inverse = int(_Element(value).inverse())
    return inverse >> 64, inverse & ((1 << 64) - 1)


def inverses_of_small(values: np.ndarray) -> np.ndarray:
    """Element array of the inverses of small nonzero field elements (pycryptodome's `inverse`, cached)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size and int(values.min()) <= 0:
        raise SecAggError("zero has no inverse (two shares with the same x-coordinate?)")
    distinct, where = np.unique(values, return_inverse=True)
    table = np.array([_inverse_of_small(int(v)) for v in distinct], np.uint64).reshape(-1, 2)
    return table[where.reshape(values.shape)]


@functools.cache
def check_against_library() -> None:
    """Compare one random full product with pycryptodome's `_Element.__mul__`; SecAggError if they differ."""
    left, right = os.urandom(BLOCK), os.urandom(BLOCK)
    ours = to_blocks(multiply(from_blocks(left, 1), from_blocks(right, 1)))[0]
    if ours != (_Element(left) * _Element(right)).encode():
        raise SecAggError("GF(2^128) product disagrees with pycryptodome's (library changed?)")
