"""A real deployment for tests: `fedrec serve` and device fleets as separate processes on loopback.

The device processes run with TensorFlow made unimportable (a PYTHONPATH entry whose
`tensorflow` package raises), so every test that uses this also proves the device side never
imports it. Nothing here emulates the coordinator or the devices; only the data split and the
process management are the harness's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator import up
from coordinator.catalog import Catalog
from coordinator.config import DeploymentConfig
from coordinator.state_store import ADDRESS_FILE, CATALOG_FILE, METRICS_ADDRESS_FILE, TOKEN_FILE
from coordinator.tls import TLS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "tff_pipeline", "coordinator")


def no_tensorflow_env(folder: Path) -> dict[str, str]:
    """An environment in which importing TensorFlow (or the server packages) fails loudly."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on a device')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO_ROOT)])
    return env


@dataclasses.dataclass
class Fleet:
    root: Path
    profile: str
    process: subprocess.Popen | None = None


class Deployment:
    """Coordinator + fleets under `root`; call `start()`, then `stop()` (a fixture does)."""

    def __init__(self, root: Path, split: Any, *, training: Any, deployment: DeploymentConfig,
                 fleets: list[tuple[int, str]], record_uploads: bool = True, capture: bool = True) -> None:
        self.root, self.split, self.training = root, split, training
        self.state_dir = root / "coordinator"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        Catalog.from_split(split).write(self.state_dir / CATALOG_FILE)
        total = sum(count for count, _ in fleets)
        self.users = up.select_users(split.train.users, total, seed=0)
        self.deployment = dataclasses.replace(deployment, population=total)
        self.port = up.free_port()
        self.config_path = up.write_coordinator_config(self.state_dir, training.to_dict(), self.deployment,
                                                       port=self.port)
        self.capture_path = root / "capture.jsonl" if capture else None
        self.record_uploads = record_uploads
        self.fleets: list[Fleet] = []
        start = 0
        for index, (count, profile) in enumerate(fleets):
            shard = up.prepare_devices(root / f"fleet-{index}", split, self.users[start:start + count], shards=1)[0]
            self.fleets.append(Fleet(shard, profile))
            start += count
        self.device_env = no_tensorflow_env(root / "blockers")
        self.coordinator: subprocess.Popen | None = None
        self.address = ""

    # processes

    def start(self) -> Deployment:
        self.start_coordinator()
        for fleet in self.fleets:
            self.start_fleet(fleet)
        return self

    def start_coordinator(self) -> None:
        (self.state_dir / ADDRESS_FILE).unlink(missing_ok=True)
        args = ["serve", "--config", str(self.config_path), "--parent-pid", str(os.getpid())]
        if self.capture_path is not None:
            args += ["--capture-requests", str(self.capture_path)]
        self.coordinator = up.spawn("fedrec_cli", *args, log_path=self.root / "coordinator.log")
        self.address = up.wait_for_file(self.state_dir / ADDRESS_FILE, self.coordinator, timeout_s=300,
                                        what="the coordinator")

    def start_fleet(self, fleet: Fleet) -> None:
        args = [sys.executable, "-m", "edge_client.fleet", "--devices-root", str(fleet.root),
                "--coordinator", f"127.0.0.1:{self.port}",
                "--ca-cert", str(self.state_dir / TLS_DIR / "ca.pem"),
                "--enroll-token-file", str(self.state_dir / TOKEN_FILE), "--profile", fleet.profile,
                "--parent-pid", str(os.getpid()), "--log-level", "INFO"]
        if self.record_uploads:
            args.append("--record-uploads")
        log = open(self.root / f"{fleet.root.parent.name}.log", "ab")
        fleet.process = subprocess.Popen(args, env=self.device_env, cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait(timeout=30)

    def kill_fleet(self, fleet: Fleet) -> None:
        assert fleet.process is not None
        fleet.process.send_signal(signal.SIGKILL)
        fleet.process.wait(timeout=30)

    def stop(self) -> None:
        processes = [f.process for f in self.fleets if f.process is not None]
        up.stop_processes(processes)
        if self.coordinator is not None:
            up.stop_processes([self.coordinator])

    # observing

    @property
    def ca_pem(self) -> bytes:
        return (self.state_dir / TLS_DIR / "ca.pem").read_bytes()

    @property
    def enroll_token(self) -> str:
        return (self.state_dir / TOKEN_FILE).read_text().strip()

    @property
    def metrics_address(self) -> str:
        return (self.state_dir / METRICS_ADDRESS_FILE).read_text().strip()

    def status(self) -> Any:
        return asyncio.run(up.read_status(self.address, self.ca_pem))

    def wait_until(self, predicate: Callable[[Any], bool], *, timeout_s: float, what: str,
                   interval_s: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.coordinator is not None and self.coordinator.poll() not in (None, 0):
                raise AssertionError(f"the coordinator exited with {self.coordinator.returncode}: "
                                     f"{self.log_tail('coordinator.log')}")
            try:
                last = self.status()
            except Exception:  # noqa: BLE001 - restarting, or between listening states
                last = None
            if last is not None and predicate(last):
                return last
            time.sleep(interval_s)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}; "
                             f"{self.log_tail('coordinator.log')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
