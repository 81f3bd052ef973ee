"""The device tells the truth (issue 16, item 5): `fedrec-edge join`, the fleet and an edge pod
against a real coordinator (`fedrec serve`, its own process) over loopback TLS.

"joined" is said only once the coordinator let the device in; a wrong token or a CA that does
not match the coordinator ends the join with one line naming the coordinator; every device
process stops promptly and cleanly on SIGTERM and SIGINT in the round loop; one participation
per device folder. Device processes run with TensorFlow unimportable (tests/edge/processes.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge_client.fleet import STATS_FILE
from edge_client.identity import IDENTITY_DIR
from tests.edge.processes import (
    CORE_LOG_LINE,
    PROMPT_STOP_S,
    DeviceProcess,
    edge,
    fleet,
    free_port,
    no_tensorflow_env,
    one_error_line,
    pod,
)

pytestmark = pytest.mark.e2e  # a real `fedrec serve` that the device processes join

TOKEN = "a-test-token-of-at-least-16-chars"
CONFIG = """state_dir = "{state}"
[server]
host = "127.0.0.1"
port = {port}
metrics_port = -1
enroll_token = "{token}"
[rounds]
population = {population}
"""
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
JOINED = r"^joined {address} as device (d-[0-9a-f]+); taking part in rounds until Ctrl-C$"


@dataclasses.dataclass(frozen=True)
class Coordinator:
    address: str
    ca: Path
    folder: Path


def _serve(folder: Path, state: str, port: int, token: str, *, template: str = CONFIG,
           population: int = 10) -> tuple[subprocess.Popen, str, Path, Path]:
    """`fedrec serve` as its own process (it imports TensorFlow: up to minutes to start here), its
    state in `folder/state`: (process, address, its CA file, its log)."""
    from coordinator import up

    config = folder / f"{state}.toml"
    config.write_text(template.format(state=state, port=port, token=token, population=population))
    log_path = folder / f"{state}.log"
    process = up.spawn("fedrec_cli", "serve", "--config", str(config), "--parent-pid", str(os.getpid()),
                       log_path=log_path)
    try:
        address = up.wait_for_file(folder / state / "address", process, timeout_s=600, what="the coordinator")
    except (RuntimeError, TimeoutError) as error:
        _stop(process)
        raise AssertionError(f"{error}: {log_path.read_text(errors='replace')[-3000:]}") from None
    return process, address, folder / state / "tls" / "ca.pem", log_path


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coordinator")
    process, address, ca, _ = _serve(folder, "state", free_port(), TOKEN)
    try:
        yield Coordinator(address, ca, folder)
    finally:
        _stop(process)


def _join(env: dict[str, str], folder: Path, name: str, device: Path, address: str, ca: Path,
          *flags: str) -> DeviceProcess:
    return edge(env, folder, name, "--device-dir", str(device), "join", "--coordinator", address, "--ca-cert", str(ca),
                *flags)


def _ca_named(folder: Path, common_name: str) -> Path:
    """A CA certificate under another name than the coordinator's (verification fails otherwise)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(key, hashes.SHA256()))
    path = folder / "named-ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


# Finding 1: a wrong enrollment token

def test_a_wrong_enrollment_token_is_one_line_naming_the_coordinator(coordinator, env, tmp_path):
    done = _join(env, tmp_path, "join", tmp_path / "device", coordinator.address, coordinator.ca,
                 "--enroll-token", "WRONG")
    line = one_error_line(done, "fedrec-edge")
    assert line == (f"fedrec-edge: error: the coordinator at {coordinator.address} refused the enrollment token "
                    "(bad_token: the enrollment token is wrong)")
    assert "joined" not in done.stdout


# Finding 2: a CA that cannot verify the coordinator (another coordinator's, or any other)

@pytest.mark.parametrize("kind", ["another-coordinators-ca", "a-ca-of-another-name"])
def test_a_ca_that_cannot_verify_the_coordinator_is_one_line_naming_it(kind, coordinator, env, tmp_path):
    if kind == "another-coordinators-ca":
        from coordinator import tls

        tls.load_or_create(tmp_path / "other")
        ca = tmp_path / "other" / tls.TLS_DIR / "ca.pem"
        reason = "certificate signature failure"
    else:
        ca = _ca_named(tmp_path, "not the fedrec CA")
        reason = "unable to get local issuer certificate"
    done = _join(env, tmp_path, "join", tmp_path / "device", coordinator.address, ca, "--enroll-token", TOKEN)
    line = one_error_line(done, "fedrec-edge")  # also: no gRPC C-core log lines ("I0000 ... Handshake failed")
    assert line == (f"fedrec-edge: error: the CA certificate {ca} does not match the coordinator at "
                    f"{coordinator.address} (TLS: certificate verify failed: {reason}); give that coordinator's CA "
                    "(its state folder's tls/ca.pem)")
    assert done.stdout == ""


# Finding 2 ("joined" only once enrolled), 5 (one join per folder) and 3 (stop in the round loop)

@pytest.mark.parametrize("signum", SIGNALS)
def test_joined_is_said_once_enrolled_a_second_join_is_refused_and_a_signal_stops_it(signum, coordinator, env,
                                                                                     tmp_path):
    device = tmp_path / "device"
    first = _join(env, tmp_path, "first", device, coordinator.address, coordinator.ca, "--enroll-token", TOKEN)
    try:
        device_id = first.wait_for(JOINED.format(address=re.escape(coordinator.address)), timeout_s=120)[1]
        assert (device / IDENTITY_DIR / "device.pem").is_file()  # enrolled before saying so
        second = _join(env, tmp_path, "second", device, coordinator.address, coordinator.ca, "--enroll-token", TOKEN)
        line = one_error_line(second, "fedrec-edge")
        assert line.startswith(f"fedrec-edge: error: {device}: another join (pid {first.process.pid} on ")
        assert line.endswith(") is using this device folder; stop it first")
        (tmp_path / "token").write_text(TOKEN)
        whole = fleet(env, tmp_path, "fleet", "--devices-root", str(tmp_path), "--coordinator", coordinator.address,
                      "--ca-cert", str(coordinator.ca), "--enroll-token-file", str(tmp_path / "token"))
        line = one_error_line(whole, "python -m edge_client.fleet")
        assert line.startswith(f"python -m edge_client.fleet: error: {device}: another join (pid {first.process.pid} "
                               "on ") and line.endswith(") is using this device folder; stop it first")
        status = edge(env, tmp_path, "status", "--device-dir", str(device), "status")
        assert status.finish() == 0, status.output()  # other device commands keep working
        time.sleep(3)  # in the round loop: a check-in the coordinator holds (up to 20 s)
        code, seconds = first.stop(signum)
    finally:
        first.kill()
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, first.output())
    assert "Traceback" not in first.stderr and not CORE_LOG_LINE.search(first.stderr), first.output()
    lines = first.stdout.splitlines()
    assert lines[0] == f"joined {coordinator.address} as device {device_id}; taking part in rounds until Ctrl-C"
    assert re.fullmatch(r"rounds: \d+ completed, \d+ abandoned; models installed: \d+", lines[-1]), lines


def test_a_stored_identity_is_not_joined_until_the_coordinator_answers(coordinator, env, tmp_path):
    device = tmp_path / "device"
    enrolling = _join(env, tmp_path, "enroll", device, coordinator.address, coordinator.ca, "--enroll-token", TOKEN)
    try:
        device_id = enrolling.wait_for(JOINED.format(address=re.escape(coordinator.address)), timeout_s=120)[1]
        assert enrolling.stop()[0] == 0
    finally:
        enrolling.kill()
    port = free_port()  # the same CA (so the stored identity counts), but nobody at this address
    waiting = _join(env, tmp_path, "unreachable", device, f"127.0.0.1:{port}", coordinator.ca)
    try:
        waiting.wait_for(rf"^fedrec-edge: waiting for the coordinator at 127\.0\.0\.1:{port} \(connection refused\); "
                         "retrying$", stream="stderr", timeout_s=60)
        time.sleep(2)
        code, seconds = waiting.stop()
    finally:
        waiting.kill()
    assert code == 0 and seconds < PROMPT_STOP_S and waiting.stdout == "", waiting.output()
    again = _join(env, tmp_path, "again", device, coordinator.address, coordinator.ca)  # no token needed now
    try:
        assert again.wait_for(JOINED.format(address=re.escape(coordinator.address)), timeout_s=120)[1] == device_id
        assert again.stop()[0] == 0
    finally:
        again.kill()


# Finding 3 and 5: the fleet and an edge pod in the round loop

@pytest.mark.parametrize("signum", SIGNALS)
def test_a_fleet_in_the_round_loop_holds_its_folders_and_stops_promptly(signum, coordinator, env, tmp_path):
    root = tmp_path / "devices"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    (tmp_path / "token").write_text(TOKEN + "\n")
    running = fleet(env, tmp_path, "fleet", "--devices-root", str(root), "--coordinator", coordinator.address,
                    "--ca-cert", str(coordinator.ca), "--enroll-token-file", str(tmp_path / "token"),
                    "--log-level", "INFO")
    try:
        for name in ("a", "b"):
            running.wait_for(rf"{name}: joined {re.escape(coordinator.address)} as d-", stream="stderr", timeout_s=120)
        join = _join(env, tmp_path, "join", root / "a", coordinator.address, coordinator.ca)
        line = one_error_line(join, "fedrec-edge")
        assert line.startswith(f"fedrec-edge: error: {root / 'a'}: another join (pid {running.process.pid} on ")
        assert line.endswith(") is using this device folder; stop it first")
        time.sleep(3)
        code, seconds = running.stop(signum)
    finally:
        running.kill()
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, running.output())
    assert "Traceback" not in running.stderr and not CORE_LOG_LINE.search(running.stderr), running.output()
    stats = json.loads((root / STATS_FILE).read_text())
    assert sorted(stats) == [str(root / "a"), str(root / "b")]
    assert all(values["checkins"] >= 1 for values in stats.values()), stats


def test_an_edge_pod_in_the_round_loop_stops_promptly_on_sigterm(coordinator, tmp_path):
    credentials = tmp_path / "credentials"  # what the Secret volume holds
    credentials.mkdir()
    (credentials / "ca.crt").write_bytes(coordinator.ca.read_bytes())
    (credentials / "enroll-token").write_text(TOKEN)
    pod_env = no_tensorflow_env(tmp_path / "blockers", allow=("tff_pipeline",))  # its data loaders: numpy only
    running = pod(pod_env, tmp_path, "pod", "--pod-name", "fedrec-edge-1", "--devices-per-pod", "2", "--devices-root",
                  str(tmp_path / "pod"), "--credentials", str(credentials), "--coordinator", coordinator.address,
                  "--metrics-port", "-1", "--log-level", "INFO")
    try:
        joined = rf"joined {re.escape(coordinator.address)} as d-"
        running.wait_for(rf"{joined}[\s\S]*{joined}", stream="stderr", timeout_s=180)  # both devices
        time.sleep(3)
        code, seconds = running.stop(signal.SIGTERM)
    finally:
        running.kill()
    assert code == 0 and seconds < PROMPT_STOP_S, (code, seconds, running.output())
    assert "Traceback" not in running.stderr and not CORE_LOG_LINE.search(running.stderr), running.output()
    assert len(json.loads((tmp_path / "pod" / STATS_FILE).read_text())) == 2


# Rounds of the pod's three devices (CONFIG's [rounds] is its last table).
ROUNDS_CONFIG = CONFIG + """min_reporters = 2
selection_timeout_s = 5.0
[training]
clients_per_round = 3
rounds = 1000
"""


def _rounds_completed(log_path: Path) -> int:
    return len(re.findall(r"round \d+ completed", log_path.read_text(errors="replace")))


def _wait(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def test_an_edge_pod_follows_a_coordinator_that_started_over_with_a_new_ca(tmp_path):
    """Issue 19, item 4. A coordinator on a fresh volume makes a new CA and token and publishes
    them to the Secret; the pod's devices notice the changed files, reconnect with the new CA,
    enroll again, and rounds resume within 2 minutes, without restarting the pod."""
    port = free_port()
    first, _, first_ca, first_log = _serve(tmp_path, "first", port, TOKEN, template=ROUNDS_CONFIG, population=3)
    credentials = tmp_path / "credentials"  # what the Secret volume holds
    credentials.mkdir()
    (credentials / "ca.crt").write_bytes(first_ca.read_bytes())
    (credentials / "enroll-token").write_text(TOKEN)
    pod_env = no_tensorflow_env(tmp_path / "blockers", allow=("tff_pipeline",))
    running = pod(pod_env, tmp_path, "pod", "--pod-name", "fedrec-edge-0", "--devices-per-pod", "3", "--devices-root",
                  str(tmp_path / "pod"), "--credentials", str(credentials), "--coordinator", f"127.0.0.1:{port}",
                  "--metrics-port", "-1", "--log-level", "INFO")
    second = None
    try:
        _wait(lambda: _rounds_completed(first_log) >= 1, 240, "a round with the first coordinator")
        _stop(first)
        second_token = "a-new-token-after-a-fresh-volume"
        second, _, second_ca, second_log = _serve(tmp_path, "second", port, second_token, template=ROUNDS_CONFIG,
                                                  population=3)
        assert second_ca.read_bytes() != first_ca.read_bytes()
        # The kubelet updates the Secret's files (the pod keeps running).
        (credentials / "enroll-token").write_text(second_token)
        (credentials / "ca.crt").write_bytes(second_ca.read_bytes())
        seconds = _wait(lambda: _rounds_completed(second_log) >= 1, 120, "a round with the new coordinator")
        print(f"rounds resumed {seconds:.1f} s after the credentials changed")
        assert running.process.poll() is None  # the same pod process
        assert "changed (a coordinator with a new CA)" in running.stderr
        code, _ = running.stop(signal.SIGTERM)
    finally:
        running.kill()
        if second is not None:
            _stop(second)
        _stop(first)
    assert code == 0, running.output()
    stats = json.loads((tmp_path / "pod" / STATS_FILE).read_text())
    assert len(stats) == 3 and sum(s["rounds_completed"] for s in stats.values()) >= 2, stats
