"""Shamir secret sharing of secrets longer than one GF(2^128) block.

pycryptodome's `Shamir` shares one 16-byte block; a longer secret (a 32-byte X25519 key) is cut into
blocks, each shared with its own random polynomial at the same x-coordinates, and a share is the
concatenation of one holder's block shares. Holders are numbered x = 1..num_shares.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

from protocol.secagg.errors import SecAggError

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


def combine_shares(shares: Sequence[tuple[int, bytes]], *, threshold: int) -> bytes:
    """The secret from (x, share) pairs: all are validated, exactly the first `threshold` are used."""
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
    used = shares[:threshold]
    return b"".join(
        Shamir.combine([(x, bytes(share[i:i + BLOCK])) for x, share in used], ssss=False)
        for i in range(0, length, BLOCK))
