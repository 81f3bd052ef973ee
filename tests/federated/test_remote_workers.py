"""`fedrec simulate --workers` on real TFF worker services (`fedrec worker`) on loopback ports:
the same model as the local run, a clear and quick error for a worker that does not answer, and
no worker process left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest

from tff_pipeline.config import ConfigError
from tff_pipeline.worker import LocalService, local_services
from tff_pipeline.worker_address import WorkerAddress, parse_workers

pytestmark = pytest.mark.e2e  # real TFF worker processes

# The smallest run that still spreads a cohort: 12 clients over 2 workers, 3 rounds.
RUN_FLAGS = ("--rounds", "3", "--clients-per-round", "12", "--dim", "4", "--local-steps", "2",
             "--eval-every", "1000", "--no-baselines", "--quiet")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _fedrec(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec_cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def services():
    """Two `python -m tff_pipeline.worker` services; after them, none of their processes lives."""
    with local_services(2) as started:
        yield started
    for service in started:
        assert not _alive(service.pid) and not _alive(service.worker_pid)


def _workers_flag(services: list[LocalService]) -> str:
    return ",".join(f"127.0.0.1:{service.port}" for service in services)


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1", "is not HOST:PORT"),
    ("127.0.0.1:", "port must be a number"),
    ("127.0.0.1:0", "port must be a number"),
    ("127.0.0.1:65536", "port must be a number"),
    ("127.0.0.1:80,,127.0.0.1:81", "empty entry"),
    ("127.0.0.1:80,127.0.0.1:80", "twice"),
    ("bad_host!:80", "not a host name"),
    ("::1:80", "in brackets"),
    ("[::1:80", "[ADDRESS]:PORT"),
    ("[nope]:80", "not an IPv6 address"),
])
def test_malformed_workers_are_refused_naming_the_entry(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as refused:
        parse_workers(text)
    assert refused.value.field == "workers"


def test_worker_addresses_are_parsed_as_grpc_targets():
    parsed = parse_workers("127.0.0.1:8000, fedrec-tff-worker.sim.svc.cluster.local:8000,[::1]:9")
    assert [str(a) for a in parsed] == ["127.0.0.1:8000", "fedrec-tff-worker.sim.svc.cluster.local:8000", "[::1]:9"]
    assert parsed[2] == WorkerAddress("::1", 9)


def test_two_workers_train_the_model_the_local_run_trains(services, tff_runtime, tmp_path: Path):
    """The CLI, as a user runs it, against the same config trained on the local TFF worker.
    Spreading changes only the order of the float32 sums of the aggregate (a partial sum per
    worker, then merged): about 1 float32 ulp of the parameters, not bit-identical."""
    from tff_pipeline import simulation
    from tff_pipeline.data import load_dataset
    from tff_pipeline.run_folder import RunFolder

    out = tmp_path / "remote"
    done = _fedrec("simulate", "--workers", _workers_flag(services), "--out", str(out), *RUN_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "grappler" not in done.stderr  # the compiler's harmless ERROR lines are filtered
    assert "Traceback" not in done.stderr  # nor does gRPC's poller complain of a closed channel
    config = RunFolder(out).read_identity().config
    local = simulation.run(config, load_dataset(config.dataset, seed=config.seed))
    remote = np.load(out / "final_model.npz")
    for name, want in zip(("item_embeddings", "item_bias", "global_mean"), local.params):
        np.testing.assert_allclose(remote[name], np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=name)
    report = json.loads((out / "report.json").read_text())
    for metric, value in local.report["final"].items():
        assert report["final"][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), metric
    assert [r["cohort"] for r in report["history"]] == [12, 12, 12]


def test_each_worker_gets_its_slice_and_one_worker_is_bit_identical(services, tff_runtime, monkeypatch):
    """TFF cuts a cohort of 10 into 5 + 5; one worker runs the same sums in the same order as the
    local worker, so its model is bit-identical."""
    from tensorflow_federated.python.core.impl.types import placements

    from tff_pipeline import remote_runtime, simulation
    from tff_pipeline.config import SimulationConfig
    from tff_pipeline.data import synthetic_split

    clients_seen: dict[str, set[int]] = {}
    make_executor = remote_runtime._RemoteWorker.executor

    def recording_executor(self, cardinalities: dict):
        executor = make_executor(self, cardinalities)
        clients_seen.setdefault(str(self.address), set()).add(cardinalities[placements.CLIENTS])
        return executor

    monkeypatch.setattr(remote_runtime._RemoteWorker, "executor", recording_executor)
    split = synthetic_split(seed=3, num_users=60, num_items=40, num_negatives=10, mean_ratings_per_user=15)
    # One user per TFF client (a client group would make the cohort one client).
    config = SimulationConfig(rounds=2, clients_per_round=10, dim=4, local_steps=2, eval_every=1000, baselines=False,
                              users_per_client=1)
    local = simulation.run(config, split)
    addresses = [WorkerAddress("127.0.0.1", service.port) for service in services]
    with remote_runtime.using_workers(addresses, connect_timeout=5):
        simulation.run(config, split)
    assert set(clients_seen) == {str(a) for a in addresses}
    assert all(5 in seen for seen in clients_seen.values()), clients_seen
    with remote_runtime.using_workers(addresses[:1], connect_timeout=5):
        remote = simulation.run(config, split)
    for got, want in zip(remote.params, local.params):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_unreachable_worker_is_named_quickly(services):
    closed = portpicker.pick_unused_port()  # nothing listens there
    started = time.monotonic()
    done = _fedrec("simulate", "--workers", f"127.0.0.1:{services[0].port},127.0.0.1:{closed}",
                   "--worker-timeout", "1", *RUN_FLAGS, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert f"the TFF worker 127.0.0.1:{closed} is unreachable (no gRPC connection within 1 s)" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 15  # checked before TensorFlow is imported: the timeout plus Python's start


def test_worker_lost_mid_run_fails_the_round_with_its_address(services, tff_runtime):
    """TFF retries an unavailable worker forever; ours gives up after the connect timeout."""
    from tff_pipeline import remote_runtime, simulation, worker
    from tff_pipeline.config import SimulationConfig
    from tff_pipeline.data import synthetic_split

    split = synthetic_split(seed=3, num_users=60, num_items=40, num_negatives=10, mean_ratings_per_user=15)
    config = SimulationConfig(rounds=3, clients_per_round=10, dim=4, local_steps=2, eval_every=1000, baselines=False)
    port = portpicker.pick_unused_port()
    doomed = worker.start(port)
    lost_at: list[float] = []

    def lose_worker_after_round_one(row: dict) -> None:
        if row["round"] == 1:
            worker.stop(doomed)
            lost_at.append(time.monotonic())

    try:
        addresses = [WorkerAddress("127.0.0.1", services[0].port), WorkerAddress("127.0.0.1", port)]
        with pytest.raises(remote_runtime.WorkerUnreachable, match=f"127.0.0.1:{port} is unreachable"):
            with remote_runtime.using_workers(addresses, connect_timeout=1):
                simulation.run(config, split, on_round=lose_worker_after_round_one)
        assert time.monotonic() - lost_at[0] < 15
    finally:
        worker.stop(doomed)
    assert not _alive(doomed.pid)


def test_fedrec_worker_refuses_a_port_in_use(services):
    done = _fedrec("worker", "--port", str(services[0].port), timeout=60)
    assert done.returncode == 2
    assert f"fedrec: error: port {services[0].port} is already in use" in done.stderr


def test_worker_service_stops_its_worker_binary_on_sigterm_and_when_killed():
    with local_services(2) as (stopped, killed):
        os.kill(stopped.pid, signal.SIGTERM)
        os.kill(killed.pid, signal.SIGKILL)  # no handler runs: the parent-death signal must act
        deadline = time.monotonic() + 15
        while (_alive(stopped.worker_pid) or _alive(killed.worker_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(stopped.worker_pid) and not _alive(killed.worker_pid)


def test_k8s_worker_deployment_serves_the_port_its_service_and_probes_name():
    """k8s/simulation as rendered by kustomize: 2 `fedrec worker` pods on the headless Service's
    port, TCP probes on it, and the restricted profile's settings (kubernetes-validate checks
    the schema; this checks what the schema cannot)."""
    import shutil

    import yaml

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    root = Path(__file__).resolve().parents[2] / "k8s" / "simulation"
    rendered = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True, check=True).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered)}
    deployment, service = docs["Deployment", "fedrec-tff-worker"], docs["Service", "fedrec-tff-worker"]
    assert deployment["spec"]["replicas"] == 2 and service["spec"]["clusterIP"] == "None"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "fedrec/coordinator:0.1.0"
    assert container["command"] == ["fedrec", "worker", "--port", "8000"]
    assert container["ports"] == [{"name": "grpc", "containerPort": 8000}]
    assert service["spec"]["ports"][0]["port"] == 8000 and service["spec"]["ports"][0]["targetPort"] == "grpc"
    assert container["readinessProbe"]["tcpSocket"]["port"] == container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    job = yaml.safe_load((root / "simulate-job.yaml").read_text())
    for spec in (pod, job["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    driver = job["spec"]["template"]["spec"]["containers"][0]["command"]
    compile(driver[2], "simulate-job.yaml", "exec")  # the driver script at least parses
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "simulate"
