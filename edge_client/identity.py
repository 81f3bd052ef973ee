"""A device's identity towards the coordinator: its own key, and the certificate enrollment gave it.

Kept in `device_dir/identity/`: `device.key` (P-256, made on the device, never sent), `device.pem`
(the client certificate the coordinator's CA signed at enrollment) and `ca.pem` (the CA the
device pins). The key is written before enrollment and the certificate after, each atomically,
so a kill in between leaves a key without a certificate: the next `join` enrolls again with it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_client.errors import DeviceError
from protocol.files import atomic_write

IDENTITY_DIR = "identity"


@dataclasses.dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes


class IdentityStore:
    def __init__(self, device_dir: Path | str) -> None:
        self.folder = Path(device_dir) / IDENTITY_DIR

    def load(self, ca_pem: bytes) -> DeviceIdentity | None:
        """The enrolled identity, if it was issued by the CA `ca_pem`; None if not enrolled (with it)."""
        paths = [self.folder / name for name in ("device.key", "device.pem", "ca.pem")]
        if not all(path.exists() for path in paths):
            return None
        key_pem, cert_pem, stored_ca = (path.read_bytes() for path in paths)
        if stored_ca.strip() != ca_pem.strip():
            return None  # another coordinator (or a new CA): enroll again
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as error:
            raise DeviceError(f"{paths[1]}: not a certificate ({error}); remove {self.folder} to enroll again") from None
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            raise DeviceError(f"{paths[1]}: the certificate names no device")
        return DeviceIdentity(str(names[0].value), key_pem, cert_pem, ca_pem)

    def certificate_request(self) -> bytes:
        """A CSR for this device's key (made and stored first if there is none)."""
        key = self._key()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec device")]))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)

    def save(self, *, device_id: str, certificate_pem: bytes, ca_pem: bytes) -> DeviceIdentity:
        key_pem = (self.folder / "device.key").read_bytes()
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        received = certificate.public_key()
        if (not isinstance(received, ec.EllipticCurvePublicKey)
                or received.public_numbers() != self._key().public_key().public_numbers()):
            raise DeviceError("the coordinator returned a certificate for another key; enrollment refused")
        atomic_write(self.folder / "ca.pem", ca_pem)
        atomic_write(self.folder / "device.pem", certificate_pem)
        return DeviceIdentity(device_id, key_pem, certificate_pem, ca_pem)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        path = self.folder / "device.key"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
            new_key = ec.generate_private_key(ec.SECP256R1())
            atomic_write(path, new_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
            os.chmod(path, 0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DeviceError(f"{path}: not an EC private key; remove {self.folder} to enroll again")
        return key
