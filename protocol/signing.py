"""Signed requests: how a device proves, on every call, that it is the device it enrolled as.

At enrollment a device keeps its P-256 key and the coordinator records the public key of the
certificate it issued. Every later request carries, in the gRPC metadata, an ECDSA signature
over the method name and the request's deterministic serialization (which includes the
header's fresh nonce, so a recorded request cannot be replayed: the coordinator refuses a nonce
it has seen). Signing per message, rather than client certificates on the TLS connection,
keeps enrollment and rounds on one port (gRPC's Python server cannot ask for an optional client
certificate) and survives proxies that terminate TLS.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.errors import ProtocolError

SIGNATURE_METADATA = "fedrec-signature-bin"  # binary metadata keys end in -bin
MAX_SIGNATURE_BYTES = 80  # DER ECDSA P-256 signatures are at most 72 bytes


class SignatureError(ProtocolError, ValueError):
    pass


def signed_payload(method: str, request_bytes: bytes) -> bytes:
    return b"fedrec-request-v1|" + method.encode() + b"|" + request_bytes


def sign_request(key: ec.EllipticCurvePrivateKey, method: str, request: object) -> bytes:
    payload = signed_payload(method, request.SerializeToString(deterministic=True))  # type: ignore[attr-defined]  # a generated message
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify_request(public_key_der: bytes, signature: bytes, method: str, request: object) -> None:
    """Raise SignatureError unless `signature` is the key's signature of this request."""
    if not signature or len(signature) > MAX_SIGNATURE_BYTES:
        raise SignatureError("the request carries no valid signature")
    key = serialization.load_der_public_key(public_key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the enrolled key is not an EC key")
    payload = signed_payload(method, request.SerializeToString(deterministic=True))  # type: ignore[attr-defined]  # a generated message
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("the signature does not verify with the device's enrolled key") from None


def public_key_der(certificate_public_key: ec.EllipticCurvePublicKey) -> bytes:
    return certificate_public_key.public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
