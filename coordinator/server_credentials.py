"""The gRPC server's TLS credentials: the coordinator's own certificate, or a bring-your-own one
that is served anew when it is renewed.

cert-manager renews a certificate well before it expires and the kubelet updates the mounted
Secret; a coordinator that read its certificate once would serve the old one until it expired.
gRPC asks for the certificate configuration at each new handshake (`dynamic_ssl_server_credentials`),
so the renewed one is served from the next connection on, without a restart. A renewed file that
would fail handshakes (wrong key, name or issuer, half-written) is not served: the current one
stays, and the refusal is logged once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from coordinator.tls import ServerTls, TlsError, with_external_server

log = logging.getLogger("fedrec.coordinator")


def server_credentials(tls: ServerTls, tls_dir: Path | None) -> grpc.ServerCredentials:
    """`tls`'s server certificate (devices' client certificates verified with its own CA); with a
    bring-your-own folder, the newest valid certificate in it at each handshake."""
    if tls_dir is None:
        return grpc.ssl_server_credentials([(tls.server_key_pem, tls.server_cert_pem)], root_certificates=tls.ca_pem,
                                           require_client_auth=False)
    initial = grpc.ssl_server_certificate_configuration([(tls.server_key_pem, tls.server_cert_pem)],
                                                        root_certificates=tls.ca_pem)
    watch = RenewedCertificate(tls, tls_dir)
    return grpc.dynamic_ssl_server_credentials(initial, watch.fetch, require_client_authentication=False)


class RenewedCertificate:
    """gRPC's certificate fetcher for a bring-your-own folder: a new configuration when tls.crt
    changed to a valid certificate, None (keep serving the current one) otherwise."""

    def __init__(self, tls: ServerTls, folder: Path) -> None:
        self._tls = tls
        self._folder = Path(folder)
        self._served = tls.server_cert_pem
        self._refused: bytes | None = None
        self._lock = threading.Lock()  # gRPC may call from several handshakes at once

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            current = (self._folder / "tls.crt").read_bytes()
        except OSError:
            return None
        with self._lock:
            if current in (self._served, self._refused):
                return None
            try:
                renewed = with_external_server(self._tls, self._folder)
            except TlsError as error:
                self._refused = current
                log.warning("not serving the changed certificate in %s: %s (the current one stays)", self._folder, error)
                return None
            if renewed.server_cert_pem != current:  # changed again while being read: next handshake
                return None
            if renewed.external_trust_pem != self._tls.external_trust_pem:
                log.warning("the CA in %s changed: devices were given the old one and trust it until the coordinator "
                            "restarts and publishes the new one", self._folder)
            self._served = current
            log.info("serving the renewed certificate from %s", self._folder)
            return grpc.ssl_server_certificate_configuration([(renewed.server_key_pem, renewed.server_cert_pem)],
                                                            root_certificates=self._tls.ca_pem)
