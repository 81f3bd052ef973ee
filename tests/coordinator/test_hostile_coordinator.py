"""A real `fedrec serve` under hostile use (issue 16, items 1, 7, 8, 9 and 4): a second instance,
malformed protobufs, /metrics paths, a Sybil enrolling identities, `fedrec status` once it is gone.

One coordinator process serves the module (it imports TensorFlow: tens of seconds to start);
every client is a real gRPC or HTTP client over loopback.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator import up
from coordinator.state_store import ADDRESS_FILE, METRICS_ADDRESS_FILE
from coordinator.tls import TLS_DIR
from edge_client.round_client import open_channel
from protocol.generated import rounds_pb2, rounds_pb2_grpc
from tests.coordinator.commands import fedrec, one_error_line

pytestmark = pytest.mark.e2e  # a real `fedrec serve`

TOKEN = "hostile-test-token-0123456789"
POPULATION = 20
METRICS_HOST = "127.0.0.2"  # loopback, but not where gRPC listens




class Coordinator:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.port = up.free_port()
        self.config = root / "coordinator.toml"
        self.config.write_text(f'state_dir = "state"\n[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
                               f'metrics_host = "{METRICS_HOST}"\nmetrics_port = 0\nenroll_token = "{TOKEN}"\n'
                               f"[rounds]\npopulation = {POPULATION}\n")
        self.log = root / "coordinator.log"
        self.process = up.spawn("fedrec_cli", "serve", "--config", str(self.config), log_path=self.log)
        self.address = up.wait_for_file(self.state / ADDRESS_FILE, self.process, timeout_s=300,
                                        what="the coordinator")
        self.ca_pem = (self.state / TLS_DIR / "ca.pem").read_bytes()

    def call(self, method: str, request: object) -> object:
        async def go() -> object:
            async with open_channel(self.address, self.ca_pem) as channel:
                return await getattr(rounds_pb2_grpc.CoordinatorStub(channel), method)(request, timeout=30)
        return asyncio.run(go())

    def status(self) -> rounds_pb2.StatusResponse:
        return self.call("Status", rounds_pb2.StatusRequest())  # type: ignore[return-value]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    running = Coordinator(tmp_path_factory.mktemp("hostile"))
    yield running
    running.stop()


def test_a_second_coordinator_on_the_same_state_folder_is_refused_at_once(coordinator):
    """Item 1: it used to open the same database and serve beside the first."""
    started = time.monotonic()
    line = one_error_line(fedrec("serve", "--config", str(coordinator.config)))
    assert time.monotonic() - started < 30  # refused before TensorFlow is imported
    assert str(coordinator.state) in line and f"pid {coordinator.process.pid}" in line and "in use" in line
    # Another state folder on the same port: refused too (gRPC's SO_REUSEPORT once let both listen).
    other = coordinator.root / "other.toml"
    other.write_text(coordinator.config.read_text().replace('state_dir = "state"', 'state_dir = "other-state"'))
    line = one_error_line(fedrec("serve", "--config", str(other)))
    assert f"port: cannot listen on 127.0.0.1:{coordinator.port}" in line and "in use" in line
    assert not (coordinator.root / "other-state").exists()
    assert coordinator.process.poll() is None and coordinator.status().rounds_planned > 0


def test_malformed_protobufs_are_refused_counted_and_logged_in_one_line(coordinator):
    """Item 8: each gave UNKNOWN, was not counted, and logged a traceback (120 lines for 40)."""
    before = coordinator.status().refused["malformed"]
    methods = [m.name for m in rounds_pb2.DESCRIPTOR.services_by_name["Coordinator"].methods]

    async def send_garbage() -> list[grpc.aio.AioRpcError]:
        errors = []
        async with open_channel(coordinator.address, coordinator.ca_pem) as channel:
            for index in range(40):
                method = methods[index % len(methods)]
                call = channel.unary_unary(f"/fedrec.rounds.v1.Coordinator/{method}")
                try:
                    await call(b"\x0a\xff\xff\xff\xff\x0f" + bytes([index]) * 7, timeout=30)
                except grpc.aio.AioRpcError as error:
                    errors.append(error)
        return errors

    errors = asyncio.run(send_garbage())
    assert len(errors) == 40
    assert {e.code() for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all(e.details().startswith("malformed: the request is not a valid ") for e in errors)
    assert coordinator.status().refused["malformed"] == before + 40
    time.sleep(0.5)
    log = coordinator.log.read_text(errors="replace")
    assert "Traceback" not in log and "DecodeError" not in log.replace("DecodeError: Error parsing", "")
    assert 1 <= sum("refused (malformed)" in line for line in log.splitlines()) <= 3


def _get(address: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_metrics_answer_only_their_paths_on_their_own_address(coordinator):
    """Item 9: /metrics/../../etc/passwd returned the metrics; any path did."""
    address = (coordinator.state / METRICS_ADDRESS_FILE).read_text().strip()
    assert address.startswith(f"{METRICS_HOST}:")
    status, body = _get(address, "/metrics")
    assert status == 200 and b"fedrec_rounds_started_total" in body and b"fedrec_messages_refused_total" in body
    for path in ("/metrics/../../etc/passwd", "/etc/passwd", "/", "/metrics/", "/metricsx", "/../metrics"):
        assert _get(address, path)[0] == 404, path
    assert _get(address, "/metrics", method="POST")[0] == 405
    assert _get(address, "/healthz")[0] == 200 and _get(address, "/readyz")[0] == 200
    port = int(address.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # bound to its own address only
        _get(f"127.0.0.1:{port}", "/metrics")


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec device")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM)


def test_one_token_mints_a_bounded_number_of_identities(coordinator):
    """Item 7: with the token and one reused CSR, 500 distinct identities enrolled in 16.8 s."""
    reused = _csr(ec.generate_private_key(ec.SECP256R1()))

    async def enroll_many() -> tuple[set[str], list[str]]:
        ids, refusals = set(), []
        async with open_channel(coordinator.address, coordinator.ca_pem) as channel:
            stub = rounds_pb2_grpc.CoordinatorStub(channel)
            for _ in range(500):
                request = rounds_pb2.EnrollRequest(token=TOKEN, certificate_request=reused, label="sybil")
                ids.add((await stub.Enroll(request, timeout=30)).device_id)
            for k in range(POPULATION + 10):  # fresh keys: the population plus 10% and no more
                request = rounds_pb2.EnrollRequest(token=TOKEN, label=f"user-{k}",
                                                   certificate_request=_csr(ec.generate_private_key(ec.SECP256R1())))
                try:
                    ids.add((await stub.Enroll(request, timeout=30)).device_id)
                except grpc.aio.AioRpcError as error:
                    refusals.append(f"{error.code().name}: {error.details()}")
        return ids, refusals

    ids, refusals = asyncio.run(enroll_many())
    assert len(ids) == 22  # one for the reused CSR, then 21 more: floor(20 * 1.1) in all
    assert len(refusals) == 9 and all(r.startswith("RESOURCE_EXHAUSTED: enrollment_full") for r in refusals)
    status = coordinator.status()
    assert status.devices_enrolled == 22 and status.refused["enrollment_full"] == 9


def test_wrong_token_guesses_are_rate_limited_then_status_reads_the_stopped_state(coordinator):
    """Item 7 (300 guesses in 0.5 s, unlimited) and item 4 (`fedrec status` needed a live coordinator)."""
    async def guess() -> list[str]:
        codes = []
        async with open_channel(coordinator.address, coordinator.ca_pem) as channel:
            stub = rounds_pb2_grpc.CoordinatorStub(channel)
            request = rounds_pb2.EnrollRequest(token="a-wrong-guess-of-the-token",
                                               certificate_request=_csr(ec.generate_private_key(ec.SECP256R1())))
            for _ in range(300):
                try:
                    await stub.Enroll(request, timeout=30)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.details().split(":")[0])
        return codes

    codes = asyncio.run(guess())
    assert codes.count("bad_token") == 10 and codes.count("rate_limited") == 290
    refused = coordinator.status().refused
    assert refused["bad_token"] == 10 and refused["rate_limited"] == 290

    live = fedrec("status", "--state-dir", str(coordinator.state))
    assert live.returncode == 0 and "devices 22" in live.stdout and "rate_limited 290" in live.stdout, live
    assert coordinator.stop() == 0
    offline = fedrec("status", "--state-dir", str(coordinator.state))
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("coordinator not running")
    assert "rounds 0/300 completed" in offline.stdout and "devices 22" in offline.stdout and "no DP" in offline.stdout
    assert os.path.exists(coordinator.state / "coordinator.db")
