"""Devices on the loop: one or many `RoundClient`s in this process, each with its own store and keys.

`fedrec-edge join` runs one device; `python -m edge_client.fleet` runs every device folder under
a root (how `fedrec up` simulates hundreds of devices on one machine without hundreds of
interpreters). A device folder is an ordinary device (`Device`): its model, its SQLite store,
its identity; `ratings.csv` in it, if present, is what the simulated user rated, imported once
the device has its first model. Nothing is shared between devices but the event loop.

The process ends on SIGTERM/SIGINT (or when its parent dies: `--parent-pid`), after writing
`fleet-stats.json` (what each device sent and received).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_client.device import Device
from edge_client.identity import IdentityStore
from edge_client.profiles import DeviceProfile, fleet_profiles
from edge_client.round_client import RoundClient, enroll, open_channel
from protocol import rounds_pb2_grpc
from protocol.files import atomic_write
from protocol.logs import configure as configure_logs

PENDING_RATINGS = "ratings.csv"
LABEL_FILE = "label"
STATS_FILE = "fleet-stats.json"
log = logging.getLogger("fedrec.device")


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    coordinator: str
    ca_pem: bytes
    enroll_token: str
    profile: str = "ideal"
    seed: int = 0
    record_uploads: bool = False  # each device keeps its plaintext uploads in <device>/uploads/ (audits, tests)
    host: str = ""  # the edge pod these devices run in (CheckInRequest.host); "" on a plain machine


async def run_devices(device_dirs: Sequence[Path], options: FleetOptions, stop: asyncio.Event) -> dict[str, dict]:
    """Run a RoundClient per folder until `stop`; returns each device's stats."""
    profiles = fleet_profiles(options.profile, len(device_dirs), seed=options.seed)
    clients = await asyncio.gather(*(
        _start(folder, options, profile, seed=options.seed * 1_000_003 + position)
        for position, (folder, profile) in enumerate(zip(device_dirs, profiles))))
    try:
        await asyncio.gather(*(client.run(stop) for client, _ in clients))
    finally:
        for client, channel in clients:
            await channel.close()
            client.device.close()
    return {str(client.device.device_dir): dataclasses.asdict(client.stats) for client, _ in clients}


async def _start(folder: Path, options: FleetOptions, profile: DeviceProfile, *, seed: int):
    device = Device(folder)
    label_file = folder / LABEL_FILE
    label = label_file.read_text().strip() if label_file.exists() else ""
    identity = await _enroll_with_retries(folder, options, label)
    channel = open_channel(options.coordinator, options.ca_pem)
    pending = folder / PENDING_RATINGS
    client = RoundClient(device, rounds_pb2_grpc.CoordinatorStub(channel), identity, profile=profile, seed=seed,
                         pending_ratings=pending if pending.exists() else None,
                         record_uploads=folder / "uploads" if options.record_uploads else None, host=options.host)
    return client, channel


async def _enroll_with_retries(folder: Path, options: FleetOptions, label: str):
    import grpc

    delay = 0.5
    while True:
        try:
            return await enroll(options.coordinator, options.ca_pem, options.enroll_token, IdentityStore(folder),
                                label=label)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(delay)  # the coordinator is not up yet
            delay = min(delay * 2, 5.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_client.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--devices-root", type=Path, required=True, help="one device folder per subfolder")
    parser.add_argument("--coordinator", required=True, help="HOST:PORT")
    parser.add_argument("--ca-cert", type=Path, required=True)
    parser.add_argument("--enroll-token-file", type=Path, required=True)
    parser.add_argument("--profile", default="ideal", help="ideal | mixed | heterogeneous")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--record-uploads", action="store_true",
                        help="each device keeps its own plaintext uploads in <device>/uploads/ (audits, tests)")
    args = parser.parse_args(argv)
    configure_logs(args.log_level, args.log_format)
    folders = sorted(p for p in args.devices_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    options = FleetOptions(args.coordinator, args.ca_cert.read_bytes(), args.enroll_token_file.read_text().strip(),
                           args.profile, args.seed, args.record_uploads)

    async def amain() -> dict[str, dict]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if args.parent_pid:
            asyncio.create_task(_watch_parent(args.parent_pid, stop))
        return await run_devices(folders, options, stop)

    stats = asyncio.run(amain())
    atomic_write(args.devices_root / STATS_FILE, json.dumps(stats))
    return 0


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid:
            stop.set()
            return
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
