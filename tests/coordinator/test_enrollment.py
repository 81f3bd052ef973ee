"""Enrollment under hostile use (issue 16, item 7: one token minted 500 identities, all sharing one
key, and 300 wrong guesses took 0.5 s). The real servicer, TLS authority and SQLite store, called
in-process with a stand-in for gRPC's call context (peer address and abort only)."""

from __future__ import annotations

import asyncio
import types

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.metrics import CoordinatorMetrics
from coordinator.rate_limit import FailureLimiter, LogLimiter, peer_host
from coordinator.service import CoordinatorService
from coordinator.state_store import StateStore
from coordinator.tls import load_or_create
from protocol.generated import rounds_pb2

TOKEN = "the-fleet-enrollment-token"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Context:
    """What the servicer asks of a call: who is calling, and how to refuse."""

    def __init__(self, peer: str = "ipv4:10.1.2.3:40000") -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def csr(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec device")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def service(tmp_path):
    store = StateStore(tmp_path / "state")
    clock = Clock()
    service = CoordinatorService(store=store, scheduler=types.SimpleNamespace(current=None),  # type: ignore[arg-type]
                                 metrics=CoordinatorMetrics(),
                                 tls=load_or_create(tmp_path / "state"), enroll_token=TOKEN, max_devices=22,
                                 enroll_limiter=FailureLimiter(clock=clock))
    service.clock = clock  # type: ignore[attr-defined]
    yield service
    store.close()


def enroll(service: CoordinatorService, request: bytes, *, label: str = "", token: str = TOKEN,
           peer: str = "ipv4:10.1.2.3:40000") -> rounds_pb2.EnrollResponse:
    message = rounds_pb2.EnrollRequest(token=token, certificate_request=request, label=label)
    return asyncio.run(service.Enroll(message, Context(peer)))


def refused(service: CoordinatorService) -> dict[str, float]:
    return {reason: service.metrics.value("fedrec_messages_refused_total", reason=reason)
            for reason in ("bad_token", "rate_limited", "key_reused", "enrollment_full")}


def test_one_reused_csr_is_one_identity_not_five_hundred(service):
    request = csr()
    first = enroll(service, request, label="user-1")
    again = [enroll(service, request, label="user-1") for _ in range(5)]
    assert {r.device_id for r in again} == {first.device_id}  # a retry after a lost answer: the same identity
    with pytest.raises(Aborted) as other_label:
        enroll(service, request, label="user-2")
    assert other_label.value.code == grpc.StatusCode.ALREADY_EXISTS and "key_reused" in other_label.value.details
    assert service.store.num_devices() == 1 and refused(service)["key_reused"] == 1


def test_the_token_admits_the_population_plus_the_margin_and_no_more(service):
    ids = {enroll(service, csr(), label=f"user-{k}").device_id for k in range(22)}  # population 20 + 10%
    assert len(ids) == 22 and service.store.num_devices() == 22
    with pytest.raises(Aborted) as full:
        enroll(service, csr(), label="user-22")
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 22 devices" in full.value.details
    assert refused(service)["enrollment_full"] == 1
    # A device that lost its folder enrolls again under its label: it takes its own slot back,
    # and the identity it replaces can no longer sign anything.
    old = next(d for d, label in service.store.devices().items() if label == "user-3")
    new = enroll(service, csr(), label="user-3").device_id
    assert new != old and service.store.num_devices() == 22
    assert old not in service.store.public_keys() and new in service.store.public_keys()
    with pytest.raises(Aborted) as revoked_key:  # the replaced identity's key cannot come back either
        enroll(service, csr(), label="user-3x")  # still full
    assert revoked_key.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_failed_enrollments_are_rate_limited_per_address_and_counted(service):
    for _ in range(300):
        with pytest.raises(Aborted):
            enroll(service, csr(), token="guess", peer="ipv4:10.9.9.9:5555")
    counts = refused(service)
    assert counts["bad_token"] == 10 and counts["rate_limited"] == 290  # only 10 guesses were even checked
    # The right token from that address waits too, until the bucket refills (10 per minute)...
    with pytest.raises(Aborted) as limited:
        enroll(service, csr(), peer="ipv4:10.9.9.9:6000")
    assert limited.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again in" in limited.value.details
    # ...while another address enrolls at once, and the guesser may try again a few seconds later.
    assert enroll(service, csr(), peer="ipv4:10.1.1.1:1").device_id
    service.clock.now += 7  # type: ignore[attr-defined]
    assert enroll(service, csr(), label="patient", peer="ipv4:10.9.9.9:6001").device_id
    assert service.store.num_devices() == 2


def test_everyone_together_is_limited_too(service):
    for k in range(100):
        with pytest.raises(Aborted):
            enroll(service, csr(), token="guess", peer=f"ipv4:10.0.{k // 250}.{k % 250}:1")
    with pytest.raises(Aborted) as limited:
        enroll(service, csr(), token="guess", peer="ipv4:10.7.7.7:1")
    assert "rate_limited" in limited.value.details


def test_peer_addresses_and_log_lines():
    assert peer_host("ipv4:10.0.0.5:41234") == "ipv4:10.0.0.5"
    assert peer_host("ipv6:[::1]:41234") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/socket") == "unix:/tmp/socket"
    clock = Clock()
    logs = LogLimiter(interval_s=10, clock=clock)
    assert logs.should_log("malformed") and not logs.should_log("malformed") and not logs.should_log("malformed")
    assert logs.should_log("replay")  # another reason has its own line
    clock.now += 11
    assert logs.should_log("malformed") and logs.take_suppressed("malformed") == 2
