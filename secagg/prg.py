"""The mask generator: a 16-byte seed stretched to a vector of Z_{2^b} with AES-128-CTR.

Every seed expands exactly one stream (self-mask seeds are fresh per round, pairwise seeds are derived
per round and pair), so the fixed all-zero counter block never repeats under one key. The device and
the server must produce identical masks: the byte order (little-endian uint64) is part of the protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.errors import SecAggError

SEED_BYTES = 16
MAX_LENGTH = 1 << 28
_ZERO_COUNTER = bytes(16)


def expand(seed: bytes, length: int, bit_width: int) -> np.ndarray:
    """`length` uniform elements of Z_{2^bit_width} (uint64): the AES-CTR keystream of `seed`, masked."""
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 1 <= bit_width <= 64:
        raise SecAggError(f"bit_width must be an integer in 1..64, got {bit_width!r}")
    values = keystream(seed, length).astype(np.uint64)  # checks seed and length; a writable copy in native order
    if bit_width < 64:
        values &= np.uint64((1 << bit_width) - 1)
    return values


def keystream(seed: bytes, length: int) -> np.ndarray:
    """The seed's first `length` little-endian uint64 words of AES-CTR keystream, read-only, unmasked.

    For sums mod 2^b: adding unmasked words mod 2^64 and masking once at the end gives the same
    result as masking every `expand` (2^b divides 2^64), one array pass fewer per mask.
    """
    encryptor = _encryptor(seed)
    _check_length(length)
    return np.frombuffer(encryptor.update(_zeros(8 * length)), dtype="<u8")  # the encryption of zeros


class KeystreamSum:
    """A running sum mod 2^64 of many seeds' `keystream`s, generated into one reused buffer.

    The server removes one mask per survivor and per (dropped, neighbour) pair: a new 444 KB bytes
    object per mask and its frombuffer view cost ~10% of the AES itself.
    """

    def __init__(self, length: int) -> None:
        _check_length(length)
        self.length = length
        self.total = np.zeros(length, np.uint64)
        self._plaintext = _zeros(8 * length)  # the keystream is the encryption of zeros
        self._buffer = bytearray(8 * length + 15)  # update_into wants room for one block more
        self._words = np.frombuffer(self._buffer, dtype="<u8", count=length)

    def add(self, seed: bytes, *, subtract: bool = False) -> None:
        """total += keystream(seed) (or -=), mod 2^64."""
        _encryptor(seed).update_into(self._plaintext, self._buffer)
        if subtract:
            self.total -= self._words
        else:
            self.total += self._words


def _encryptor(seed: bytes) -> Any:
    """AES-128-CTR from the all-zero counter under `seed` (checked): one stream per seed."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise SecAggError(f"a mask seed must be {SEED_BYTES} bytes")
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise SecAggError(f"mask length must be an integer in 0..{MAX_LENGTH}, got {length!r}")


_ZEROS = bytes(1 << 20)


def _zeros(size: int) -> bytes | memoryview:
    """`size` zero bytes without allocating them again for every mask (at most a shared 1 MiB)."""
    return memoryview(_ZEROS)[:size] if size <= len(_ZEROS) else bytes(size)
