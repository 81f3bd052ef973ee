"""Device processes under hostile use, with no coordinator (issue 16, item 5): refused flags, a
coordinator that is not there, stop signals in every state, one participation per device folder.

Real `fedrec-edge join`, `python -m edge_client.fleet` and `python -m edge_client.pod` processes
(TensorFlow unimportable) dial loopback ports nobody listens on; tests/edge/test_join.py has
the ones that need a real coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from edge_client import cli as edge_cli
from edge_client import fleet as fleet_module
from edge_client.device import DeviceError
from edge_client.fleet import STATS_FILE, WaitNotice
from edge_client.join_lock import JOIN_LOCK_FILE, JoinLock, participation
from edge_client.round_client import JoinRefused, connection_trouble
from tests.edge.processes import (
    CORE_LOG_LINE,
    PROMPT_STOP_S,
    edge,
    fleet,
    free_port,
    no_tensorflow_env,
    one_error_line,
    pod,
)

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
WAITING = r"waiting for the coordinator at 127\.0\.0\.1:{port} \(connection refused\); retrying"


@pytest.fixture(scope="module")
def pod_env(tmp_path_factory) -> dict[str, str]:
    """A pod makes its users' ratings with tff_pipeline.data (numpy only): TensorFlow stays blocked."""
    return no_tensorflow_env(tmp_path_factory.mktemp("pod-blockers"), allow=("tff_pipeline",))


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory) -> Path:
    """A CA certificate of a coordinator that is not running (the TLS code is pure `cryptography`)."""
    from coordinator import tls

    folder = tmp_path_factory.mktemp("somebody-else")
    tls.load_or_create(folder)
    return folder / tls.TLS_DIR / "ca.pem"


@pytest.fixture()
def listener():
    """A loopback port that listens but never answers: a connection to it is counted."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def _garbage_ca(folder: Path, kind: str) -> Path:
    path = folder / f"ca-{kind}.pem"
    if kind == "text":
        path.write_text("this is not a certificate\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_text("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n")
    elif kind == "private-key":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    return path


# Finding 2: a CA file that is not a PEM certificate

@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "private-key", "binary"])
def test_join_refuses_a_ca_file_that_is_not_a_certificate_before_connecting(kind, env, tmp_path, listener):
    ca = _garbage_ca(tmp_path, kind)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    done = edge(env, tmp_path, "join", "--device-dir", str(tmp_path / "device"), "join", "--coordinator", address,
                "--enroll-token", "some-token", "--ca-cert", str(ca))
    line = one_error_line(done, "fedrec-edge")
    assert line == (f"fedrec-edge: error: --ca-cert {ca}: not a PEM certificate; give the coordinator's CA "
                    "(its state folder's tls/ca.pem)")
    assert "joined" not in done.stdout
    assert _connections(listener) == 0  # refused before any connection


# Finding 2: an unreachable coordinator is waited for, saying so; finding 3: and it stops

@pytest.mark.parametrize("signum", SIGNALS)
def test_join_says_it_waits_for_an_unreachable_coordinator_and_stops_on_a_signal(signum, env, ca_pem, tmp_path):
    port = free_port()
    done = edge(env, tmp_path, "join", "--device-dir", str(tmp_path / "device"), "join", "--coordinator",
                f"127.0.0.1:{port}", "--enroll-token", "some-token", "--ca-cert", str(ca_pem))
    done.wait_for(WAITING.format(port=port), stream="stderr", timeout_s=60)
    time.sleep(4)  # three retries (at 0.5, 1 and 2 s): the same reason is not said again
    code, seconds = done.stop(signum)
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, done.output())
    assert done.stdout == "", done.output()  # never "joined"
    assert done.stderr.splitlines() == [f"fedrec-edge: waiting for the coordinator at 127.0.0.1:{port} (connection "
                                        "refused); retrying", f"fedrec-edge: stopped before joining 127.0.0.1:{port}"]


@pytest.mark.parametrize("signum", SIGNALS)
def test_fleet_stops_on_a_signal_while_waiting_for_the_coordinator(signum, env, ca_pem, tmp_path):
    root = tmp_path / "devices"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    (tmp_path / "token").write_text("some-token\n")
    port = free_port()
    done = fleet(env, tmp_path, "fleet", "--devices-root", str(root), "--coordinator", f"127.0.0.1:{port}",
                 "--ca-cert", str(ca_pem), "--enroll-token-file", str(tmp_path / "token"))
    done.wait_for(WAITING.format(port=port), stream="stderr", timeout_s=60)
    time.sleep(3)
    code, seconds = done.stop(signum)
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, done.output())
    assert "Traceback" not in done.stderr and not CORE_LOG_LINE.search(done.stderr), done.output()
    assert len([line for line in done.stderr.splitlines() if "waiting for the coordinator" in line]) == 1
    stats = json.loads((root / STATS_FILE).read_text())
    assert sorted(stats) == [str(root / "a"), str(root / "b")] and stats[str(root / "a")]["checkins"] == 0


# Finding 4: the fleet's and the pod's flags

def test_fleet_refuses_a_missing_devices_root_with_one_line(env, ca_pem, tmp_path):
    (tmp_path / "token").write_text("some-token\n")
    missing = tmp_path / "no-such-root"
    done = fleet(env, tmp_path, "fleet", "--devices-root", str(missing), "--coordinator", f"127.0.0.1:{free_port()}",
                 "--ca-cert", str(ca_pem), "--enroll-token-file", str(tmp_path / "token"))
    line = one_error_line(done, "python -m edge_client.fleet")
    assert line == f"python -m edge_client.fleet: error: --devices-root {missing}: No such file or directory"


def test_fleet_refuses_a_missing_enroll_token_file_with_one_line(env, ca_pem, tmp_path):
    (tmp_path / "devices" / "a").mkdir(parents=True)
    missing = tmp_path / "no-such-token"
    done = fleet(env, tmp_path, "fleet", "--devices-root", str(tmp_path / "devices"), "--coordinator",
                 f"127.0.0.1:{free_port()}", "--ca-cert", str(ca_pem), "--enroll-token-file", str(missing))
    line = one_error_line(done, "python -m edge_client.fleet")
    assert line == f"python -m edge_client.fleet: error: --enroll-token-file {missing}: no such enrollment token file"


def test_fleet_refuses_an_unknown_profile_with_one_line(env, ca_pem, tmp_path):
    (tmp_path / "devices" / "a").mkdir(parents=True)
    (tmp_path / "token").write_text("some-token\n")
    done = fleet(env, tmp_path, "fleet", "--devices-root", str(tmp_path / "devices"), "--coordinator",
                 f"127.0.0.1:{free_port()}", "--ca-cert", str(ca_pem), "--enroll-token-file", str(tmp_path / "token"),
                 "--profile", "fast-and-loose")
    line = one_error_line(done, "python -m edge_client.fleet")
    assert line.startswith("python -m edge_client.fleet: error: --profile: unknown device profile 'fast-and-loose' "
                           "(known: ideal, mixed, "), line
    assert not (tmp_path / "devices" / "a" / JOIN_LOCK_FILE).exists()  # refused before anything started


@pytest.mark.parametrize("flags, expected", [
    (["--profile", "nope"], "edge pod: error: --profile: unknown device profile 'nope' (known: ideal, "),
    (["--coordinator", "no-port"], "edge pod: error: --coordinator 'no-port': expected HOST:PORT"),
    (["--log-level", "LOUD"], "edge pod: error: --log-level 'LOUD': expected one of DEBUG, "),
    (["--metrics-port", "70000"], "edge pod: error: --metrics-port 70000: must be a port"),
])
def test_pod_refuses_bad_flags_with_one_line_before_preparing_its_users(flags, expected, pod_env, tmp_path):
    done = pod(pod_env, tmp_path, "pod", "--pod-name", "fedrec-edge-0", "--devices-per-pod", "2", "--devices-root",
               str(tmp_path / "pod"), "--credentials", str(tmp_path / "credentials"), "--coordinator",
               f"127.0.0.1:{free_port()}", "--metrics-port", "-1", *flags)
    assert one_error_line(done, "edge pod").startswith(expected)
    assert not (tmp_path / "pod").exists()


@pytest.mark.parametrize("signum", SIGNALS)
def test_pod_stops_on_a_signal_while_waiting_for_its_credentials(signum, pod_env, tmp_path):
    done = pod(pod_env, tmp_path, "pod", "--pod-name", "fedrec-edge-0", "--devices-per-pod", "2", "--devices-root",
               str(tmp_path / "pod"), "--credentials", str(tmp_path / "not-yet"), "--coordinator",
               f"127.0.0.1:{free_port()}", "--metrics-port", "-1")
    done.wait_for("waiting for the device credentials", stream="stderr", timeout_s=120)
    code, seconds = done.stop(signum)
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, done.output())
    assert "Traceback" not in done.stderr, done.output()


# Finding 5: one participation per device folder

def test_a_second_join_on_a_device_folder_is_refused_naming_the_holder(env, ca_pem, tmp_path):
    device = tmp_path / "device"
    with JoinLock(device):  # this test process takes part with it
        assert json.loads((device / JOIN_LOCK_FILE).read_text())["pid"] == os.getpid()
        done = edge(env, tmp_path, "join", "--device-dir", str(device), "join", "--coordinator",
                    f"127.0.0.1:{free_port()}", "--enroll-token", "some-token", "--ca-cert", str(ca_pem))
        line = one_error_line(done, "fedrec-edge")
        assert line.startswith(f"fedrec-edge: error: {device}: another join (pid {os.getpid()} on ")
        assert line.endswith(") is using this device folder; stop it first")
        (tmp_path / "token").write_text("some-token\n")
        other = tmp_path / "other"
        other.mkdir()
        done = fleet(env, tmp_path, "fleet", "--devices-root", str(tmp_path), "--coordinator",
                     f"127.0.0.1:{free_port()}", "--ca-cert", str(ca_pem),
                     "--enroll-token-file", str(tmp_path / "token"))
        line = one_error_line(done, "python -m edge_client.fleet")
        assert line.startswith(f"python -m edge_client.fleet: error: {device}: another join (pid {os.getpid()} on ")
        assert not (other / JOIN_LOCK_FILE).exists() or (other / JOIN_LOCK_FILE).read_text() == ""
    with JoinLock(device):  # released by the refused ones, and by the holder
        pass


def test_participation_takes_every_folder_or_none(tmp_path):
    held = JoinLock(tmp_path / "b")
    held.acquire()
    try:
        with pytest.raises(DeviceError, match="another join"):
            with participation([tmp_path / "a", tmp_path / "b", tmp_path / "c"]):
                pass  # pragma: no cover
        with JoinLock(tmp_path / "a"):  # "a" was released when "b" was refused
            pass
    finally:
        held.release()
    with participation([tmp_path / "a", tmp_path / "b"]):
        assert json.loads((tmp_path / "b" / JOIN_LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_join_lock_in_a_folder_that_cannot_exist_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeviceError, match=r"cannot create the device folder") as refused:
        JoinLock(tmp_path / "file" / "device").acquire()
    assert "\n" not in str(refused.value)


# The join command's flags, in-process (the fuzz tier tries many more)

@pytest.mark.parametrize("flags, expected", [
    (["--coordinator", "127.0.0.1"], "--coordinator '127.0.0.1': expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:0"], "--coordinator '127.0.0.1:0': the port must be a number from 1 to 65535"),
    (["--coordinator", "::1:7443"], "--coordinator '::1:7443': '::1' is not a host name or address"),
    (["--coordinator", "[::1]:7443", "--profile", "turbo"], "--profile: unknown device profile 'turbo'"),
    (["--coordinator", "[::1]:7443", "--log-level", "chatty"], "--log-level 'chatty': expected one of"),
    (["--coordinator", "[::1]:7443", "--enroll-token", "two\nlines"],
     "--enroll-token: the enrollment token holds control or undecodable characters"),
])
def test_join_refuses_bad_flags_with_one_line(flags, expected, ca_pem, tmp_path, capsys):
    code = edge_cli.main(["--device-dir", str(tmp_path / "device"), "join", "--ca-cert", str(ca_pem), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"fedrec-edge: error: {expected}") and err.count("\n") == 1, err


def test_join_without_a_token_on_a_device_not_enrolled_is_refused_before_connecting(ca_pem, tmp_path, capsys):
    code = edge_cli.main(["--device-dir", str(tmp_path / "device"), "join", "--coordinator", f"127.0.0.1:{free_port()}",
                          "--ca-cert", str(ca_pem)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"fedrec-edge: error: {tmp_path / 'device'}: not enrolled with the coordinator of "
                                 f"{ca_pem}; give --enroll-token to enroll\n")


# What the device says about the coordinator

def test_the_wait_notice_says_a_reason_once_per_interval_or_when_it_changes():
    said: list[str] = []
    now = [0.0]
    notice = WaitNotice("h:1", said.append, interval_s=30, report_answers=True, clock=lambda: now[0])
    for t in (0, 1, 5, 29):
        now[0] = t
        notice.waiting("connection refused")
    now[0] = 30
    notice.waiting("connection refused")
    now[0] = 31
    notice.waiting("connection reset")
    notice.answered()
    notice.answered()
    assert said == ["waiting for the coordinator at h:1 (connection refused); retrying"] * 2 + [
        "waiting for the coordinator at h:1 (connection reset); retrying", "the coordinator at h:1 answers again"]


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# The texts gRPC 1.74 gave against the real coordinator (tests/edge/test_join.py makes them for real).
OTHER_CA_SAME_NAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:38411: Ssl handshake "
                      "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1a000064:ECDSA routines:OPENSSL_internal:"
                      "BAD_SIGNATURE: certificate signature failure")
OTHER_CA_OTHER_NAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:38411: Ssl handshake "
                       "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
                       "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate")
PLAIN_SERVER = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Ssl handshake failed "
                "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
                "WRONG_VERSION_NUMBER: Invalid certificate verification context")


@pytest.mark.parametrize("details, verify", [
    (OTHER_CA_SAME_NAME, "certificate verify failed: certificate signature failure"),
    (OTHER_CA_OTHER_NAME, "certificate verify failed: unable to get local issuer certificate"),
])
def test_a_certificate_that_does_not_verify_is_a_refusal_naming_the_address(details, verify):
    with pytest.raises(JoinRefused) as refused:
        connection_trouble(_error(grpc.StatusCode.UNAVAILABLE, details), address="h:1", ca_source="ca.pem")
    assert str(refused.value) == (f"the CA certificate ca.pem does not match the coordinator at h:1 (TLS: {verify}); "
                                  "give that coordinator's CA (its state folder's tls/ca.pem)")


def test_an_edge_pod_waits_for_new_credentials_where_a_plain_fleet_stops():
    """Issue 19, item 4: an edge pod's CA and token come from a Secret that a coordinator starting
    over replaces, so a CA that no longer verifies (or a refused token) is a reason to wait while
    the pod watches the files; a fleet given its CA by hand still stops and says why."""
    said: list[str] = []
    notice = WaitNotice("h:1", said.append)
    fleet_options = fleet_module.FleetOptions("h:1", b"ca", "token", ca_source="ca.pem")
    pod_options = dataclasses.replace(fleet_options, credentials_may_change=True)
    mismatch = _error(grpc.StatusCode.UNAVAILABLE, OTHER_CA_SAME_NAME)
    with pytest.raises(JoinRefused, match="does not match the coordinator"):
        fleet_module._unavailable(mismatch, fleet_options, notice)
    fleet_module._unavailable(mismatch, pod_options, notice)
    fleet_module._unavailable(_error(grpc.StatusCode.PERMISSION_DENIED, "bad token"), pod_options, notice,
                              call="Enroll")
    assert said == [
        "waiting for the coordinator at h:1 (the CA certificate ca.pem does not match the coordinator at h:1 (TLS: "
        "certificate verify failed: certificate signature failure); give that coordinator's CA (its state folder's "
        "tls/ca.pem); waiting for new credentials); retrying",
        "waiting for the coordinator at h:1 (the coordinator at h:1 refused the enrollment token (bad token); waiting "
        "for new credentials); retrying"]


@pytest.mark.parametrize("code, details, reason", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed "
     "to connect to remote host: connect: Connection refused (111)", "connection refused"),
    (grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for nowhere.invalid:1: C-ares status is not ARES_SUCCESS",
     "its name does not resolve"),
    (grpc.StatusCode.UNAVAILABLE, PLAIN_SERVER, "TLS handshake failed: WRONG_VERSION_NUMBER"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "no answer in time"),
    (grpc.StatusCode.UNAVAILABLE, "something new\nand odd", "UNAVAILABLE: something new | and odd"),
])
def test_what_waiting_can_fix_is_a_reason(code, details, reason):
    assert connection_trouble(_error(code, details), address="h:1") == reason


def test_real_grpc_failures_on_loopback_are_reasons_to_wait(ca_pem):
    """A port nobody listens on, and one that answers, but not with TLS (an HTTP server, say): the
    handshake fails before any certificate is verified, which a CA cannot be blamed for."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(4)
        threading.Thread(target=_answer_http, args=(plain,), daemon=True).start()
        assert _status_trouble(f"127.0.0.1:{plain.getsockname()[1]}", ca_pem.read_bytes()) == \
            "TLS handshake failed: WRONG_VERSION_NUMBER"
    assert _status_trouble(f"127.0.0.1:{free_port()}", ca_pem.read_bytes()) == "connection refused"


def _answer_http(server: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def _status_trouble(address: str, ca: bytes) -> str:
    from edge_client.round_client import open_channel
    from protocol.generated import rounds_pb2, rounds_pb2_grpc

    async def call() -> str:
        async with open_channel(address, ca) as channel:
            try:
                await rounds_pb2_grpc.CoordinatorStub(channel).Status(rounds_pb2.StatusRequest(), timeout=10)
            except grpc.aio.AioRpcError as error:
                return connection_trouble(error, address=address)
        raise AssertionError("answered")

    return asyncio.run(call())


def test_a_refused_enrollment_is_a_refusal_not_a_wait():
    with pytest.raises(JoinRefused, match=r"^the coordinator at h:1 refused the enrollment token \(bad_token: the "):
        connection_trouble(_error(grpc.StatusCode.PERMISSION_DENIED, "bad_token: the enrollment token is wrong"),
                           address="h:1", call="Enroll")
    with pytest.raises(JoinRefused, match=r"^the coordinator at h:1 refused Status: UNIMPLEMENTED: no such method$"):
        connection_trouble(_error(grpc.StatusCode.UNIMPLEMENTED, "no such method"), address="h:1", call="Status")


def test_the_fleet_module_does_not_import_grpc_before_its_entry_point_quiets_it():
    """GRPC_VERBOSITY is read when grpc is first imported: the entry points set it before that."""
    import subprocess
    import sys

    for module in ("edge_client.fleet", "edge_client.pod", "edge_client.cli"):
        done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('grpc' in sys.modules)"],
                              capture_output=True, text=True, timeout=120, check=True)
        assert done.stdout.strip() == "False", module
    assert fleet_module.PROG == "python -m edge_client.fleet"
