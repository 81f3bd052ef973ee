"""`fedrec up`: a whole deployment on this machine, over loopback, with a report at the end.

    --out DIR/
      config.json, report.json, report.md, metrics.csv, ...   what `fedrec simulate` writes
      coordinator/           the coordinator's state folder (coordinator.toml, SQLite, TLS, packages)
      devices/shard-K/<user>/  simulated devices: each holds only its own user's ratings

This process is the test harness, not part of the system: it splits a data set among device
folders (each device gets its own user's train ratings and nothing else), starts `fedrec serve`
and device processes (`edge_client.fleet`, many devices each, no TensorFlow in them), follows
the coordinator's Status, and at the end evaluates the coordinator's final model on the held-out
ratings as `fedrec simulate` does. The coordinator itself never sees a rating.

Every child gets a parent-death signal, so nothing it started outlives it, even after `kill -9`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.catalog import Catalog
from coordinator.config import CoordinatorConfig, DeploymentConfig, planned, resolve
from coordinator.round_capture import write_round_captures
from coordinator.state_store import ADDRESS_FILE, CATALOG_FILE, METRICS_ADDRESS_FILE, TOKEN_FILE, StateStore
from coordinator.tls import TLS_DIR
from edge_client.fleet import STATS_FILE
from edge_client.simulated_users import device_label, prepare_devices
from protocol import children
from protocol.files import atomic_write
from protocol.upload import UploadLayout
from tff_pipeline.config import ConfigError

COORDINATOR_DIR = "coordinator"
DEVICES_DIR = "devices"
CONFIG_TOML = "coordinator.toml"
CAPTURE_FILE = "requests.jsonl"  # --capture: the coordinator's capture (`capture.RequestCapture`)

@dataclasses.dataclass(frozen=True)
class UpOptions:
    devices: int | None  # None: every user with train ratings
    device_processes: int = 2
    profile: str = "ideal"
    quiet: bool = False
    # Audit mode: devices record their plaintext uploads, the coordinator its requests and sums, and
    # `round_capture` writes each round's revealed sum beside the plaintext one here.
    capture: Path | None = None


def select_users(train_users: np.ndarray, count: int | None, *, seed: int) -> np.ndarray:
    """The users that become devices: all users with train ratings, or a seeded sample of them."""
    clients = np.unique(train_users)
    if count is None or count >= len(clients):
        return clients
    return np.sort(np.random.default_rng([seed, 99]).choice(clients, size=count, replace=False))


def coordinator_config(training: Any, deployment: DeploymentConfig, *, devices: int,
                       given: dict[str, Any]) -> CoordinatorConfig:
    """The coordinator's configuration for a fleet of `devices`, through the same path as
    `fedrec serve`'s (`config.resolve`): the population is the fleet, the privacy plan is made for
    it (so the plan printed is the plan run), and a cohort the fleet cannot hold is refused when
    given and sized to the fleet when not. Its state folder is set by `run_deployment`."""
    config = CoordinatorConfig(state_dir=Path(COORDINATOR_DIR), training=training,
                               deployment=dataclasses.replace(deployment, population=devices))
    try:
        return planned(resolve(config, given_rounds=given.get("rounds"), given_cohort=given.get("clients_per_round")))
    except ConfigError as error:  # name the flag, not the coordinator.toml key
        raise ConfigError(error.field.split("] ")[-1].replace("population", "devices"), error.message) from None


def write_coordinator_config(state_dir: Path, training: dict[str, Any], deployment: DeploymentConfig, *,
                             port: int = 0) -> Path:
    """`coordinator.toml` for `fedrec serve` (so the deployment can also be served by hand)."""
    lines = ['state_dir = "."', f'catalog = "{CATALOG_FILE}"', "", "[server]", 'host = "127.0.0.1"', f"port = {port}",
             "metrics_port = 0", "", "[training]"]
    lines += [f"{key} = {_toml(value)}" for key, value in training.items() if value is not None]
    lines += ["", "[rounds]"]
    lines += [f"{f.name} = {_toml(getattr(deployment, f.name))}" for f in dataclasses.fields(deployment)
              if getattr(deployment, f.name) is not None]
    path = state_dir / CONFIG_TOML
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def free_port() -> int:
    """A loopback port free right now (the coordinator binds it moments later)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn(module: str, *args: str, log_path: Path) -> subprocess.Popen:
    """`python -m module args` that dies with this process; output to `log_path`."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(children.module_argv(module, *args),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def wait_for_file(path: Path, process: subprocess.Popen, *, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
        time.sleep(0.1)
    raise TimeoutError(f"{what} was not ready within {timeout_s:.0f} s")


def stop_processes(processes: list[subprocess.Popen], *, grace_s: float = 20.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def read_status(address: str, ca_pem: bytes):
    """The coordinator's Status (no client certificate needed)."""
    from edge_client.round_client import open_channel
    from protocol.generated import rounds_pb2, rounds_pb2_grpc

    async with open_channel(address, ca_pem) as channel:
        return await rounds_pb2_grpc.CoordinatorStub(channel).Status(rounds_pb2.StatusRequest(), timeout=10)


def deployment_figures(state_dir: Path, final_status: Any, shard_dirs: list[Path]) -> dict[str, Any]:
    """The deployment's own figures for the report: rounds, dropouts, bytes, refusals."""
    store = StateStore(state_dir)
    try:
        rounds = store.rounds()
        counts = store.round_counts()
    finally:
        store.close()
    completed = [r for r in rounds if r.status == "completed"]
    device_stats: list[dict[str, Any]] = []
    for shard in shard_dirs:
        path = shard / STATS_FILE
        if path.exists():
            device_stats.extend(json.loads(path.read_text()).values())
    per_device_up = [s["bytes_up"] for s in device_stats]
    per_device_down = [s["bytes_down"] for s in device_stats]
    durations = [r.ended_at - r.started_at for r in completed if r.ended_at]
    return {
        "rounds_completed": counts["completed"], "rounds_abandoned": counts["abandoned"],
        "rounds_interrupted": counts["interrupted"],
        "selected": sum(r.selected for r in rounds), "dropouts": sum(r.dropouts or 0 for r in rounds),
        "bytes_in": sum(r.bytes_in or 0 for r in rounds), "bytes_out": sum(r.bytes_out or 0 for r in rounds),
        "round_seconds_median": float(np.median(durations)) if durations else None,
        "round_seconds": durations,
        "refused": dict(final_status.refused) if final_status is not None else {},
        "devices": len(device_stats),
        "bytes_up_per_device_mean": float(np.mean(per_device_up)) if per_device_up else None,
        "bytes_down_per_device_mean": float(np.mean(per_device_down)) if per_device_down else None,
        "abandon_reasons": sorted({r.reason for r in rounds if r.status == "abandoned" and r.reason}),
    }


def _rated_items(split: Any, users: np.ndarray) -> dict[str, np.ndarray]:
    """Each device label's rated items (item indices of its train ratings): the audit's ground truth."""
    return {device_label(int(user)): np.unique(split.train.items[split.train.users == user]) for user in users}


def run_deployment(*, out: Path, split: Any, config: CoordinatorConfig, options: UpOptions,
                   on_status=None) -> tuple[Any, Path, list[Path]]:
    """Start coordinator and devices, follow them until training ends, stop them.

    Returns (final Status, coordinator state folder, device shard folders)."""
    state_dir = out / COORDINATOR_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    Catalog.from_split(split).write(state_dir / CATALOG_FILE)
    users = select_users(split.train.users, options.devices, seed=config.training.seed)
    if len(users) != config.population:
        raise ValueError(f"the fleet has {len(users)} devices, the configuration plans for {config.population}")
    # A fixed port, so that devices find a restarted coordinator where it was.
    config_path = write_coordinator_config(state_dir, config.training.to_dict(), config.deployment, port=free_port())
    shard_dirs = prepare_devices(out / DEVICES_DIR, split, users, shards=max(1, options.device_processes))
    for stale in (ADDRESS_FILE, METRICS_ADDRESS_FILE):
        (state_dir / stale).unlink(missing_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        audit = [] if options.capture is None else ["--capture-requests", str(out / CAPTURE_FILE)]
        coordinator = spawn("fedrec_cli", "serve", "--config", str(config_path), "--parent-pid", str(os.getpid()),
                            *audit, log_path=out / "coordinator.log")
        processes.append(coordinator)
        address = wait_for_file(state_dir / ADDRESS_FILE, coordinator, timeout_s=600, what="the coordinator")
        ca_pem = (state_dir / TLS_DIR / "ca.pem").read_bytes()
        for shard in shard_dirs:
            processes.append(spawn(
                "edge_client.fleet", "--devices-root", str(shard), "--coordinator", address,
                "--ca-cert", str(state_dir / TLS_DIR / "ca.pem"), "--enroll-token-file", str(state_dir / TOKEN_FILE),
                "--profile", options.profile, "--seed", str(config.training.seed), "--parent-pid", str(os.getpid()),
                *(["--record-uploads"] if options.capture is not None else []), log_path=out / f"{shard.name}.log"))
        final = None
        while coordinator.poll() is None:
            try:
                final = asyncio.run(read_status(address, ca_pem))
            except Exception:  # noqa: BLE001 - the coordinator may be between rounds or shutting down
                pass
            else:
                if on_status is not None:
                    on_status(final)
                if final.phase == "finished":
                    break
            for process in processes[1:]:
                if process.poll() is not None:
                    raise RuntimeError(f"a device process exited with status {process.returncode}; see {out}")
            time.sleep(1.0)
        if coordinator.poll() not in (None, 0):
            raise RuntimeError(f"the coordinator exited with status {coordinator.returncode}; see "
                               f"{out / 'coordinator.log'}")
    finally:
        stop_processes(processes[1:])  # devices first: they write their stats on the way out
        stop_processes(processes[:1])
    if options.capture is not None:
        write_round_captures(options.capture, capture_file=out / CAPTURE_FILE, state_dir=state_dir,
                             device_roots=shard_dirs, layout=UploadLayout(split.num_items, config.training.dim),
                             rated_items=_rated_items(split, users), dp=config.training.dp)
    return final, state_dir, shard_dirs
