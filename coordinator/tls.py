"""The coordinator's certificate authority: made on first start, kept in `state_dir/tls/`.

The CA signs the coordinator's server certificate and every enrolled device's client
certificate, so each side verifies the other with one root and a device's identity is the
common name of the certificate it was issued (never a field it writes into a message).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.errors import CoordinatorError
from protocol.files import atomic_write
from protocol.signing import public_key_der

TLS_DIR = "tls"
# The name devices verify, whatever address they dial (they pin this CA, so a fixed name is safe).
SERVER_NAME = "fedrec-coordinator"
_VALIDITY = datetime.timedelta(days=3650)
_DEVICE_VALIDITY = datetime.timedelta(days=365)


class TlsError(CoordinatorError, ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ServerTls:
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    # Bring-your-own TLS: the CA that issued an external server certificate (`with_external_server`).
    # Devices then verify the server with it; the coordinator's own CA still issues and verifies
    # the devices' client certificates.
    external_trust_pem: bytes | None = None

    @property
    def device_trust_pem(self) -> bytes:
        """What devices verify the server with (published to them as ca.crt)."""
        return self.external_trust_pem if self.external_trust_pem is not None else self.ca_pem

    def csr_public_key(self, csr_pem: bytes) -> bytes:
        """The DER public key of a valid P-256 certificate request (its signature proves that the
        sender holds the private key)."""
        return public_key_der(_csr_key(_checked_csr(csr_pem)))

    def sign_device(self, csr_pem: bytes, device_id: str) -> bytes:
        """A client certificate for the key in `csr_pem`, with `device_id` as its common name."""
        key = _checked_csr(csr_pem).public_key()
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _DEVICE_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


def _checked_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise TlsError(f"the certificate request is not a PEM CSR ({error})") from None
    if not csr.is_signature_valid:
        raise TlsError("the certificate request's signature does not verify")
    _csr_key(csr)
    return csr


def _csr_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise TlsError("the certificate request must hold a P-256 public key")
    return key


def load_or_create(state_dir: Path, *, hostnames: Sequence[str] = ()) -> ServerTls:
    """The CA and server certificate in `state_dir/tls/`, created on first start."""
    folder = Path(state_dir) / TLS_DIR
    paths = {name: folder / name for name in ("ca.pem", "ca.key", "server.pem", "server.key")}
    if not all(path.exists() for path in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        ca_key, ca_cert = _new_ca()
        server_key, server_cert = _new_server(ca_key, ca_cert, hostnames)
        # The CA last: a kill mid-way leaves no ca.pem and the next start makes everything anew.
        atomic_write(paths["server.key"], _key_pem(server_key))
        atomic_write(paths["server.pem"], server_cert.public_bytes(serialization.Encoding.PEM))
        atomic_write(paths["ca.key"], _key_pem(ca_key))
        atomic_write(paths["ca.pem"], ca_cert.public_bytes(serialization.Encoding.PEM))
        for name in ("ca.key", "server.key"):
            os.chmod(paths[name], 0o600)
    try:
        ca_pem = paths["ca.pem"].read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        loaded_key = serialization.load_pem_private_key(paths["ca.key"].read_bytes(), password=None)
        server_cert_pem, server_key_pem = paths["server.pem"].read_bytes(), paths["server.key"].read_bytes()
        x509.load_pem_x509_certificate(server_cert_pem)
    except (OSError, ValueError) as error:
        raise TlsError(f"{folder}: the coordinator's TLS files cannot be used ({error}); move the folder away to "
                       "make new ones (enrolled devices must then enroll again)") from None
    if not isinstance(loaded_key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{paths['ca.key']}: not an EC private key")
    return ServerTls(ca_pem, server_cert_pem, server_key_pem, loaded_key, ca_cert)


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec coordinator CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _new_server(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                hostnames: Sequence[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    names += [x509.DNSName(h) for h in hostnames if h not in (SERVER_NAME, "localhost")]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# Bring-your-own TLS: a kubernetes.io/tls Secret (cert-manager writes ca.crt beside tls.crt/tls.key).
EXTERNAL_FILES = ("tls.crt", "tls.key", "ca.crt")


def with_external_server(tls: ServerTls, folder: Path) -> ServerTls:
    """`tls` serving the certificate in `folder` (tls.crt, its key tls.key, and ca.crt, the CA
    devices verify it with) instead of the coordinator's own server certificate. Checked here so
    that a wrong Secret stops the coordinator with one line rather than failing every handshake:
    the key matches, the certificate is valid now, names `SERVER_NAME` (the name devices verify),
    and is issued by ca.crt (directly, or through the intermediates that follow it in tls.crt)."""
    folder = Path(folder)
    try:
        cert_pem, key_pem, trust_pem = ((folder / name).read_bytes() for name in EXTERNAL_FILES)
    except OSError as error:
        raise TlsError(f"{folder}: bring-your-own TLS needs {', '.join(EXTERNAL_FILES)} ({error.strerror}: "
                       f"{error.filename})") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
        anchors = x509.load_pem_x509_certificates(trust_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as error:
        raise TlsError(f"{folder}: tls.crt, tls.key and ca.crt must be PEM ({error})") from None
    leaf = chain[0]
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise TlsError(f"{folder}: tls.key is not the key of tls.crt")
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise TlsError(f"{folder}: tls.crt is not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                       f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if SERVER_NAME not in names:
        raise TlsError(f"{folder}: tls.crt must name {SERVER_NAME!r} among its DNS names (devices verify that name); "
                       f"it names {names}")
    if not _issued_through(chain, anchors):
        raise TlsError(f"{folder}: tls.crt is not issued by ca.crt (devices would refuse it)")
    return dataclasses.replace(tls, server_cert_pem=cert_pem, server_key_pem=key_pem, external_trust_pem=trust_pem)


def _issued_through(chain: list[x509.Certificate], anchors: list[x509.Certificate]) -> bool:
    """Whether chain[0] verifies up `chain` to one of `anchors` (signatures only)."""
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            return False
    for anchor in anchors:
        try:
            chain[-1].verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return any(chain[-1] == anchor for anchor in anchors)
