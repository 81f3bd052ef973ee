"""Bring-your-own TLS (issue 19, item 6): the coordinator serves a certificate from a mounted
kubernetes.io/tls Secret (tls.crt, tls.key, and the ca.crt cert-manager adds) and gives devices
that ca.crt, while its own CA keeps issuing and verifying device certificates. A Secret that would
fail every handshake is refused at start with one line naming what is wrong. (Served and used by
real devices on the real node: tests/k8s/test_real_node.py.)"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from coordinator.tls import SERVER_NAME, TlsError, load_or_create, with_external_server

FEDREC = str(Path(sys.executable).parent / "fedrec")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_issuer(common_name: str = "example issuer") -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def write_secret(folder: Path, *, issuer=None, names=(SERVER_NAME, "fedrec-coordinator.fedrec.svc"),
                 days: int = 30, key=None, ca_override: x509.Certificate | None = None) -> Path:
    """A folder laid out as a mounted cert-manager Secret: tls.crt, tls.key, ca.crt."""
    issuer_key, issuer_cert = issuer or make_issuer()
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("coordinator")).issuer_name(issuer_cert.subject)
            .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=60)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "tls.crt").write_bytes(cert.public_bytes(pem))
    (folder / "tls.key").write_bytes((key or server_key).private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "ca.crt").write_bytes((ca_override or issuer_cert).public_bytes(pem))
    return folder


def test_the_secret_is_served_and_its_ca_is_what_devices_get(tmp_path):
    own = load_or_create(tmp_path / "state")
    secret = write_secret(tmp_path / "secret")
    tls = with_external_server(own, secret)
    assert tls.server_cert_pem == (secret / "tls.crt").read_bytes()
    assert tls.server_key_pem == (secret / "tls.key").read_bytes()
    assert tls.device_trust_pem == (secret / "ca.crt").read_bytes() != own.ca_pem
    # The coordinator's own CA still issues (and the server still verifies) device certificates.
    assert tls.ca_pem == own.ca_pem and tls.ca_cert == own.ca_cert
    assert own.device_trust_pem == own.ca_pem  # without a Secret, nothing changes


@pytest.mark.parametrize("fault, expected", [
    ("missing", "needs tls.crt, tls.key, ca.crt"),
    ("not_pem", "must be PEM"),
    ("other_key", "tls.key is not the key of tls.crt"),
    ("expired", "is not valid now"),
    ("no_server_name", "must name 'fedrec-coordinator'"),
    ("other_issuer", "is not issued by ca.crt"),
])
def test_a_secret_that_would_fail_every_handshake_is_refused_naming_why(tmp_path, fault, expected):
    own = load_or_create(tmp_path / "state")
    folder = tmp_path / "secret"
    if fault == "missing":
        write_secret(folder)
        (folder / "ca.crt").unlink()
    elif fault == "not_pem":
        write_secret(folder)
        (folder / "tls.crt").write_text("not a certificate")
    elif fault == "other_key":
        write_secret(folder, key=ec.generate_private_key(ec.SECP256R1()))
    elif fault == "expired":
        write_secret(folder, days=-1)
    elif fault == "no_server_name":
        write_secret(folder, names=("coordinator.example.com",))
    else:
        write_secret(folder, ca_override=make_issuer("someone else")[1])
    with pytest.raises(TlsError, match=expected):
        with_external_server(own, folder)


def test_fedrec_serve_refuses_a_bad_secret_in_one_line(tmp_path):
    folder = write_secret(tmp_path / "secret", names=("coordinator.example.com",))
    result = subprocess.run([FEDREC, "serve", "--state-dir", str(tmp_path / "state"), "--tls-dir", str(folder)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "must name 'fedrec-coordinator'" in result.stderr and "Traceback" not in result.stderr


def _presented(port: int, trust_pem: bytes) -> x509.Certificate:
    """The certificate a TLS handshake with 127.0.0.1:port presents (verified with `trust_pem`)."""
    import socket
    import ssl

    context = ssl.create_default_context(cadata=trust_pem.decode())
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_a_renewed_certificate_is_served_from_the_next_handshake_and_a_bad_one_never(tmp_path):
    """cert-manager renews the certificate and the kubelet updates the mounted Secret: a real
    gRPC server serves the renewed one without a restart, and keeps the current one when the
    change would fail handshakes."""
    import asyncio

    import grpc

    from coordinator.server_credentials import server_credentials

    issuer = make_issuer()
    secret = write_secret(tmp_path / "secret", issuer=issuer)
    tls = with_external_server(load_or_create(tmp_path / "state"), secret)
    trust = (secret / "ca.crt").read_bytes()
    first = x509.load_pem_x509_certificate((secret / "tls.crt").read_bytes())

    async def scenario() -> list[x509.Certificate]:
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls, secret))
        await server.start()
        try:
            seen = [await asyncio.to_thread(_presented, port, trust)]
            write_secret(secret, issuer=issuer)  # renewed: a new key and certificate, same issuer
            seen.append(await asyncio.to_thread(_presented, port, trust))
            write_secret(secret, issuer=issuer, names=("not-the-coordinator",))  # would fail every device
            seen.append(await asyncio.to_thread(_presented, port, trust))
            return seen
        finally:
            await server.stop(None)

    served = asyncio.run(scenario())
    assert served[0] == first
    assert served[1] != first and SERVER_NAME in served[1].extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert served[2] == served[1]  # the bad renewal is refused; the last good certificate stays
