"""Key agreement, key derivation and authenticated encryption for secure aggregation.

Every participant has two X25519 pairs per round: a channel pair (ECDH keys encrypt the Shamir shares
it sends to neighbours through the server) and a mask pair (ECDH seeds the pairwise masks). Keeping
them apart lets the server later reconstruct a dropped participant's mask key without also being able
to read the shares that participant exchanged. The mask private key is derived from a 16-byte seed
(`mask_key_from_seed`) and the seed is what gets Shamir-shared: one GF(2^128) block instead of two, so
the server rebuilds a dropped participant's key with half the (costly) interpolation.
"""

from __future__ import annotations

import dataclasses
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import SecAggError

KEY_BYTES = 32
SEED_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
INFO_PREFIX = b"fedrec-secagg-v1|"
_RAW = serialization.Encoding.Raw
# X25519 with a low-order point gives the all-zero secret for every (clamped) scalar, which
# cryptography refuses. The same refusal without a scalar multiplication (the coordinator checks two
# keys per device per round): libsodium's `has_small_order` blocklist
# (crypto_scalarmult/curve25519/ref10/x25519_ref10.c), every encoding of a point of small order on
# the curve or its twist, compared with the top bit cleared as X25519 ignores it (RFC 7748). A test
# checks it against the library's own refusal.
_SMALL_ORDER = frozenset(bytes.fromhex(encoding) for encoding in (
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p (= 0)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 (= 1)
))


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A fresh X25519 pair; `public_bytes()`/`private_bytes()` are the raw 32-byte encodings."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def load_private(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its raw 32 bytes."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
        raise SecAggError(f"a private key must be {KEY_BYTES} raw bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def public_of(private: X25519PrivateKey | bytes) -> bytes:
    """The raw public key of a private key (or of its raw bytes)."""
    key = private if isinstance(private, X25519PrivateKey) else load_private(private)
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def check_public(peer_public: bytes) -> X25519PublicKey:
    """A peer's raw public key, refused if it is not 32 bytes or a low-order point (no shared secret)."""
    if not isinstance(peer_public, (bytes, bytearray)) or len(peer_public) != KEY_BYTES:
        raise SecAggError(f"a public key must be {KEY_BYTES} raw bytes")
    if is_small_order(peer_public):
        raise SecAggError("a public key is a low-order point")
    return X25519PublicKey.from_public_bytes(bytes(peer_public))


def is_small_order(public: bytes) -> bool:
    """Whether X25519 with this 32-byte public key gives the all-zero secret for every scalar."""
    return bytes(public[:31]) + bytes((public[31] & 0x7F,)) in _SMALL_ORDER


def agree(private: X25519PrivateKey | bytes, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret; refuse a malformed or low-order peer key."""
    key = private if isinstance(private, X25519PrivateKey) else load_private(private)
    if not isinstance(peer_public, (bytes, bytearray)) or len(peer_public) != KEY_BYTES:
        raise SecAggError(f"a public key must be {KEY_BYTES} raw bytes")
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError:
        raise SecAggError("key agreement failed: the peer key is a low-order point") from None


def derive_key(shared: bytes, *, purpose: bytes, context: bytes, length: int) -> bytes:
    """HKDF-SHA256 of a 32-byte shared secret or a 16-byte seed, bound to what the key is for and to which round/pair.

    info = b"fedrec-secagg-v1|" + purpose + b"|" + context. `purpose` is one of the protocol's fixed
    labels and may not contain b"|", so no (purpose, context) pair collides with another.
    """
    if not isinstance(shared, (bytes, bytearray)) or len(shared) not in (KEY_BYTES, SEED_BYTES):
        raise SecAggError(f"a shared secret must be {KEY_BYTES} bytes (or a {SEED_BYTES}-byte seed)")
    if not isinstance(purpose, bytes) or not purpose or b"|" in purpose:
        raise SecAggError("purpose must be a non-empty label without '|'")
    if not isinstance(context, bytes):
        raise SecAggError("context must be bytes")
    if isinstance(length, bool) or not isinstance(length, int) or not 16 <= length <= 64:
        raise SecAggError(f"derived key length must be 16..64 bytes, got {length!r}")
    info = INFO_PREFIX + purpose + b"|" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(bytes(shared))


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: random 12-byte nonce || ciphertext || tag."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise SecAggError(f"a sealing key must be {KEY_BYTES} bytes")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, bytes(plaintext), bytes(aad))


def open_sealed(key: bytes, data: bytes, aad: bytes) -> bytes:
    """The plaintext of `seal`; refuse anything tampered with, truncated or bound to other `aad`."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise SecAggError(f"a sealing key must be {KEY_BYTES} bytes")
    if not isinstance(data, (bytes, bytearray)) or len(data) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError("sealed data is too short")
    data = bytes(data)
    try:
        return AESGCM(bytes(key)).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], bytes(aad))
    except InvalidTag:
        raise SecAggError("sealed data failed authentication (tampered, or not for this key/context)") from None


# --- The round's derived keys and the sealed share message (identical on device and server) ---

SELF_SEED_BYTES = SEED_BYTES  # the self-mask seed b
MASK_KEY_SEED_BYTES = SEED_BYTES  # the seed the mask private key s_sk is derived from
B_SHARE_BYTES = SELF_SEED_BYTES  # a Shamir share of b (one block)
KEY_SHARE_BYTES = MASK_KEY_SEED_BYTES  # a Shamir share of the mask key seed (one block)
_HEADER = struct.Struct(">II")  # sender, receiver
SHARES_PLAINTEXT_BYTES = _HEADER.size + B_SHARE_BYTES + KEY_SHARE_BYTES
SEALED_SHARES_BYTES = NONCE_BYTES + SHARES_PLAINTEXT_BYTES + TAG_BYTES


def _round_context(round_id: bytes) -> bytes:
    if not isinstance(round_id, bytes) or not 1 <= len(round_id) <= 255:
        raise SecAggError("round_id must be 1..255 bytes")
    return bytes([len(round_id)]) + round_id


def pair_context(round_id: bytes, a: int, b: int) -> bytes:
    """The HKDF context of the unordered pair {a, b} in a round (both ends derive the same key)."""
    return _round_context(round_id) + _HEADER.pack(min(a, b), max(a, b))


def channel_key(private: X25519PrivateKey | bytes, peer_public: bytes, *, round_id: bytes, a: int, b: int) -> bytes:
    """The AES-GCM key protecting the shares exchanged between a and b."""
    return derive_key(agree(private, peer_public), purpose=b"channel", context=pair_context(round_id, a, b),
                      length=KEY_BYTES)


def mask_key_from_seed(seed: bytes, *, round_id: bytes, index: int) -> X25519PrivateKey:
    """Participant `index`'s mask private key: HKDF(seed, b"mask-key") (X25519 clamps any 32 bytes).

    A 128-bit seed matches X25519's ~128-bit security, and whoever rebuilds the seed (the server, for a
    dropped participant) rebuilds the very key whose public half was advertised.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != MASK_KEY_SEED_BYTES:
        raise SecAggError(f"a mask key seed must be {MASK_KEY_SEED_BYTES} bytes")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1 << 32:
        raise SecAggError(f"participant index must be a non-negative 32-bit integer, got {index!r}")
    raw = derive_key(bytes(seed), purpose=b"mask-key", context=_round_context(round_id) + struct.pack(">I", index),
                     length=KEY_BYTES)
    return X25519PrivateKey.from_private_bytes(raw)


def mask_seed(private: X25519PrivateKey | bytes, peer_public: bytes, *, round_id: bytes, a: int, b: int) -> bytes:
    """The PRG seed of the pairwise mask of a and b."""
    return derive_key(agree(private, peer_public), purpose=b"mask", context=pair_context(round_id, a, b),
                      length=SELF_SEED_BYTES)


def _shares_aad(round_id: bytes, sender: int, receiver: int) -> bytes:
    return INFO_PREFIX + b"shares|" + _round_context(round_id) + _HEADER.pack(sender, receiver)


def seal_shares(key: bytes, *, round_id: bytes, sender: int, receiver: int, b_share: bytes,
                key_share: bytes) -> bytes:
    """sender's shares of its b and mask key seed for receiver: ">II" sender, receiver || b-share || key-share."""
    if len(b_share) != B_SHARE_BYTES or len(key_share) != KEY_SHARE_BYTES:
        raise SecAggError("share sizes do not match the protocol")
    plaintext = _HEADER.pack(sender, receiver) + b_share + key_share
    return seal(key, plaintext, _shares_aad(round_id, sender, receiver))


def open_shares(key: bytes, data: bytes, *, round_id: bytes, sender: int, receiver: int) -> tuple[bytes, bytes]:
    """(b-share, key-share) of a sealed share message, refused unless it is from sender to receiver in this round."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != SEALED_SHARES_BYTES:
        raise SecAggError(f"a share message must be {SEALED_SHARES_BYTES} bytes")
    plaintext = open_sealed(key, data, _shares_aad(round_id, sender, receiver))
    if len(plaintext) != SHARES_PLAINTEXT_BYTES or _HEADER.unpack_from(plaintext) != (sender, receiver):
        raise SecAggError(f"a share message does not name sender {sender} and receiver {receiver}")
    body = plaintext[_HEADER.size:]
    return body[:B_SHARE_BYTES], body[B_SHARE_BYTES:]
