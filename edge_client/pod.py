"""A simulated edge pod: the users it plays come from its StatefulSet ordinal, their ratings
from its own copy of the data set (never from the coordinator), and its devices run as a fleet.

    python -m edge_client.pod --pod-name fedrec-edge-3 --devices-per-pod 25 \\
        --devices-root /var/lib/fedrec-edge --credentials /etc/fedrec/credentials \\
        --coordinator $(FEDREC_COORDINATOR_SERVICE_HOST):$(FEDREC_COORDINATOR_SERVICE_PORT_GRPC)

Pod `fedrec-edge-k` plays users [k*M, (k+1)*M) of the data set's sorted train users (wrapping
around past the last one), so scaling the StatefulSet up adds new users and scaling it down
removes the highest shards, as its ordinals come and go. The device credentials (the CA
certificate and the enrollment token) come from a Secret the coordinator fills on its first
start; the pod waits for them, and keeps watching them: a coordinator that starts over on a
fresh volume makes a new CA and token and publishes them, the kubelet updates the mounted files
within a minute, and the pod then reconnects its devices with the new CA (they enroll again,
their stored identities being the old CA's) instead of failing every handshake with the CA it
read at start. `/metrics` on `--metrics-port` is what the probes ask.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_client import process
from edge_client.errors import EdgeError
from edge_client.fleet import STATS_FILE, FleetOptions, run_devices
from protocol.files import atomic_write
from protocol.logs import configure as configure_logs

log = logging.getLogger("fedrec.device")
CA_FILE = "ca.crt"
TOKEN_FILE = "enroll-token"
CREDENTIALS_POLL_S = 5.0  # how often the pod looks for changed credentials
_ORDINAL = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>[0-9]+)$")


class PodError(EdgeError, ValueError):
    """A misconfigured edge pod (bad name, no users): says what is wrong."""


def ordinal_of(pod_name: str) -> int:
    """A StatefulSet pod's ordinal: the number after the last dash of its name."""
    match = _ORDINAL.match(pod_name)
    if match is None:
        raise PodError(f"pod name {pod_name!r} is not a StatefulSet pod name (NAME-ORDINAL)")
    return int(match["ordinal"])


def shard_users(all_users: Sequence[int], *, ordinal: int, devices_per_pod: int) -> list[int]:
    """The users pod `ordinal` plays: the next `devices_per_pod` after the lower ordinals' shards."""
    users = sorted(int(u) for u in set(all_users))
    if not users:
        raise PodError("the data set has no users with train ratings")
    if devices_per_pod < 1:
        raise PodError("--devices-per-pod must be at least 1")
    if devices_per_pod > len(users):
        raise PodError(f"--devices-per-pod {devices_per_pod} exceeds the data set's {len(users)} users")
    start = ordinal * devices_per_pod
    return [users[(start + j) % len(users)] for j in range(devices_per_pod)]


def prepare_pod(devices_root: Path, *, pod_name: str, devices_per_pod: int, seed: int) -> list[Path]:
    """Write (or keep, after a restart) this pod's device folders; returns them."""
    import numpy as np

    from edge_client.simulated_users import prepare_devices
    from tff_pipeline.data import load_dataset  # numpy only: the synthetic generator and loaders

    split = load_dataset("synthetic", data_dir=None, split="random", seed=seed)
    users = shard_users(split.train.users.tolist(), ordinal=ordinal_of(pod_name), devices_per_pod=devices_per_pod)
    prepare_devices(devices_root, split, np.asarray(users), shards=1)
    shard = devices_root / "shard-0"
    return sorted(p for p in shard.iterdir() if p.is_dir())


def read_credentials(folder: Path) -> tuple[bytes, str] | None:
    """The Secret's files as they are now; None while either is missing or empty."""
    try:
        ca = (folder / CA_FILE).read_bytes()
        token = (folder / TOKEN_FILE).read_bytes().decode("utf-8", "surrogateescape").strip()
    except OSError:
        return None
    return (ca, token) if ca and token else None


async def wait_for_credentials(folder: Path, stop: asyncio.Event) -> tuple[bytes, str] | None:
    """The Secret's files, once the coordinator has published them (None if stopped first)."""
    waited = 0.0
    while not stop.is_set():
        credentials = read_credentials(folder)
        if credentials is not None:
            return credentials
        if waited % 30 == 0:
            log.warning("waiting for the device credentials in %s (the coordinator publishes them on its "
                        "first start)", folder)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        waited += 1.0
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge_client.pod", description=__doc__.splitlines()[0])
    parser.add_argument("--pod-name", required=True, help="this pod's name (downward API metadata.name)")
    parser.add_argument("--devices-per-pod", type=int, required=True)
    parser.add_argument("--devices-root", type=Path, required=True, help="where the pod's devices keep their data")
    parser.add_argument("--credentials", type=Path, required=True, help="folder with ca.crt and enroll-token")
    parser.add_argument("--coordinator", required=True, help="HOST:PORT of the coordinator's Service")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic data set's seed (as the coordinator's)")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=9100, help="/metrics for probes and scraping; -1: none")
    process.add_process_flags(parser, log_level="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        configure_logs(_check_flags(args), args.log_format)
        folders = prepare_pod(args.devices_root, pod_name=args.pod_name, devices_per_pod=args.devices_per_pod,
                              seed=args.seed)
        _serve_metrics(args, len(folders))
        log.info("%s plays %d devices (%s .. %s)", args.pod_name, len(folders), folders[0].name, folders[-1].name)
        stats = asyncio.run(_run_pod(args, folders))
        if stats is not None:
            atomic_write(args.devices_root / STATS_FILE, json.dumps(stats))
        return 0

    return process.run_main("edge pod", args.log_level, body)


def _check_flags(args: argparse.Namespace) -> str:
    """Every flag checked before the pod prepares its users (one line naming what is wrong); the log level."""
    level = process.check_log_level(args.log_level)
    ordinal_of(args.pod_name)
    if args.devices_per_pod < 1:
        raise PodError("--devices-per-pod must be at least 1")
    process.check_address(args.coordinator)
    process.check_profile(args.profile)
    process.check_seed(args.seed)
    if not -1 <= args.metrics_port <= 65535:
        raise PodError(f"--metrics-port {args.metrics_port}: must be a port (0: any free one) or -1 (none)")
    return level


def _serve_metrics(args: argparse.Namespace, devices: int) -> None:
    """/metrics for the probes; refused naming the address when it cannot listen there."""
    if args.metrics_port < 0:
        return
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    Gauge("fedrec_edge_devices", "Devices this pod runs", registry=registry).set(devices)
    try:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    except (OSError, OverflowError, ValueError) as error:
        raise PodError(f"--metrics-host {args.metrics_host!r} --metrics-port {args.metrics_port}: cannot serve "
                       f"/metrics there ({error})") from None


async def until_changed(folder: Path, current: tuple[bytes, str], stop: asyncio.Event, *,
                        poll_s: float = CREDENTIALS_POLL_S) -> bool:
    """Return True once the credentials in `folder` differ from `current` (both present: a file
    caught mid-update is read again at the next poll), False if `stop` came first."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_s)
        if stop.is_set():
            break
        now = read_credentials(folder)
        if now is not None and now != current:
            return True
    return False


async def _run_pod(args: argparse.Namespace, folders: list[Path], *,
                   poll_s: float = CREDENTIALS_POLL_S) -> dict[str, dict] | None:
    """Wait for the credentials, then run the devices, again with the new ones whenever they
    change; the devices' stats summed over those runs, or None if stopped before any ran."""
    from edge_client.round_client import check_ca_pem

    stop = asyncio.Event()
    totals: dict[str, dict] | None = None
    with process.stop_on_signals(stop):
        while not stop.is_set():
            credentials = await wait_for_credentials(args.credentials, stop)
            if credentials is None:
                break
            ca_pem, token = credentials
            options = FleetOptions(args.coordinator, check_ca_pem(ca_pem, str(args.credentials / CA_FILE)),
                                   process.check_token(token, str(args.credentials / TOKEN_FILE)), args.profile,
                                   seed=ordinal_of(args.pod_name), host=args.pod_name,
                                   ca_source=str(args.credentials / CA_FILE), credentials_may_change=True)
            this_run = asyncio.Event()  # set by a stop signal or by new credentials
            watching = asyncio.create_task(_end_run_on_change(args.credentials, credentials, stop, this_run, poll_s))
            try:
                stats = await run_devices(folders, options, this_run)
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            totals = _summed(totals, stats)
            if not stop.is_set():
                log.warning("the device credentials in %s changed (a coordinator with a new CA): the devices "
                            "reconnect with them and enroll again", args.credentials)
    return totals


async def _end_run_on_change(folder: Path, current: tuple[bytes, str], stop: asyncio.Event, this_run: asyncio.Event,
                             poll_s: float) -> None:
    await until_changed(folder, current, stop, poll_s=poll_s)
    this_run.set()  # stop too ends this run


def _summed(totals: dict[str, dict] | None, stats: dict[str, dict]) -> dict[str, dict]:
    if totals is None:
        return stats
    for device, values in stats.items():
        before = totals.setdefault(device, {})
        for name, value in values.items():
            before[name] = before.get(name, 0) + value
    return totals


if __name__ == "__main__":
    sys.exit(main())
