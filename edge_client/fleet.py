"""Devices on the loop: one or many `RoundClient`s in this process, each with its own store and keys.

`fedrec-edge join` runs one device; `python -m edge_client.fleet` runs every device folder under
a root (how `fedrec up` simulates hundreds of devices on one machine without hundreds of
interpreters). A device folder is an ordinary device (`Device`): its model, its SQLite store,
its identity; `ratings.csv` in it, if present, is what the simulated user rated, imported once
the device has its first model. Nothing is shared between devices but the event loop.

Taking part starts with the coordinator answering over TLS with the given CA (a Status call),
then each device enrolls (or uses its stored identity) and runs its rounds. Waiting for an
unreachable coordinator is said, with the reason, at most every 30 s; what waiting cannot
change (a refused token, a CA that does not match) ends the process with one line. Each device
folder's participation lock (`join_lock`) is held throughout.

The process ends on SIGTERM/SIGINT in every state (or when its parent dies: `--parent-pid`),
after writing `fleet-stats.json` (what each device sent and received).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge_client import process
from edge_client.device import Device
from edge_client.identity import IdentityStore
from edge_client.join_lock import participation
from edge_client.profiles import DeviceProfile, fleet_profiles
from protocol.files import atomic_write, read_bounded
from protocol.logs import configure as configure_logs

if TYPE_CHECKING:  # grpc is imported late: its log verbosity is read at import (`process.quiet_grpc`)
    import grpc

    from edge_client.identity import DeviceIdentity

PROG = "python -m edge_client.fleet"
PENDING_RATINGS = "ratings.csv"
LABEL_FILE = "label"
STATS_FILE = "fleet-stats.json"
REACH_TIMEOUT_S = 10.0  # one Status call while waiting for the coordinator
FIRST_RETRY_S, MAX_RETRY_S = 0.5, 5.0
WAIT_NOTICE_INTERVAL_S = 30.0
log = logging.getLogger("fedrec.device")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    coordinator: str
    ca_pem: bytes
    enroll_token: str
    profile: str = "ideal"
    seed: int = 0
    record_uploads: bool = False  # each device keeps its plaintext uploads in <device>/uploads/ (audits, tests)
    host: str = ""  # the edge pod these devices run in (CheckInRequest.host); "" on a plain machine
    ca_source: str = ""  # where ca_pem came from (a file name), for refusals
    # An edge pod's CA and token come from a Secret that a coordinator starting over replaces: a CA
    # that does not verify, or a token refused, is then a reason to wait for the new ones (the pod
    # watches the files), not to stop.
    credentials_may_change: bool = False


class WaitNotice:
    """Says that the devices wait for the coordinator, and why: at once when the reason changes,
    otherwise at most every `interval_s` (a fleet's many devices retrying every few seconds must
    not flood the log). With `report_answers`, also once when it answers again."""

    def __init__(self, address: str, say: Callable[[str], None], *, interval_s: float = WAIT_NOTICE_INTERVAL_S,
                 report_answers: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.address, self._say, self.interval_s = address, say, interval_s
        self.report_answers, self._clock = report_answers, clock
        self._reason: str | None = None
        self._said_at = -float("inf")

    def waiting(self, reason: str) -> None:
        now = self._clock()
        if reason != self._reason or now - self._said_at >= self.interval_s:
            self._say(f"waiting for the coordinator at {self.address} ({reason}); retrying")
            self._reason, self._said_at = reason, now

    def answered(self, *, quietly: bool = False) -> None:
        if self._reason is not None and self.report_answers:
            if not quietly:
                self._say(f"the coordinator at {self.address} answers again")
            self._reason = None


async def run_devices(device_dirs: Sequence[Path], options: FleetOptions, stop: asyncio.Event, *,
                      notice: WaitNotice | None = None,
                      on_joined: Callable[[Path, str], None] | None = None) -> dict[str, dict]:
    """Run a RoundClient per folder until `stop`; returns each device's stats.

    Raises JoinRefused (a ValueError) when taking part cannot work, and DeviceError when a folder
    is another join's or unusable; `on_joined(folder, device_id)` once a device is in (default: logged)."""
    from edge_client.round_client import ClientStats

    notice = notice or WaitNotice(options.coordinator, log.warning)
    on_joined = on_joined or (lambda folder, device_id: log.info("%s: joined %s as %s", folder.name,
                                                                 options.coordinator, device_id))
    profiles = fleet_profiles(options.profile, len(device_dirs), seed=options.seed)
    with participation(device_dirs), contextlib.ExitStack() as opened:
        devices = [opened.enter_context(Device(folder)) for folder in device_dirs]
        stats = {str(device.device_dir): dataclasses.asdict(ClientStats()) for device in devices}
        if not await _stoppable(stop, _reach(options, notice, stop)):
            return stats
        tasks = [asyncio.create_task(_participate(device, options, profile, options.seed * 1_000_003 + position,
                                                  notice, stop, on_joined))
                 for position, (device, profile) in enumerate(zip(devices, profiles))]
        try:
            for result in await asyncio.gather(*tasks):
                if result is not None:
                    stats[str(result[0])] = result[1]
        finally:
            await _cancel(tasks)
    return stats


async def _participate(device: Device, options: FleetOptions, profile: DeviceProfile, seed: int, notice: WaitNotice,
                       stop: asyncio.Event, on_joined: Callable[[Path, str], None]) -> tuple[Path, dict] | None:
    """One device: its identity, then its rounds until `stop`; (folder, stats), or None if stopped first."""
    from edge_client.round_client import RoundClient, open_channel
    from protocol.generated import rounds_pb2_grpc

    identity = await _stoppable(stop, _identity(device.device_dir, options, notice, stop))
    if identity is None:
        return None
    notice.answered(quietly=True)
    on_joined(device.device_dir, identity.device_id)
    pending = device.device_dir / PENDING_RATINGS
    async with open_channel(options.coordinator, options.ca_pem) as channel:
        client = RoundClient(device, rounds_pb2_grpc.CoordinatorStub(channel), identity, profile=profile, seed=seed,
                             pending_ratings=pending if pending.exists() else None,
                             record_uploads=device.device_dir / "uploads" if options.record_uploads else None,
                             host=options.host, on_unavailable=lambda error: _unavailable(error, options, notice),
                             on_answer=notice.answered)
        await _stoppable(stop, client.run(stop))
    return device.device_dir, dataclasses.asdict(client.stats)


async def _reach(options: FleetOptions, notice: WaitNotice, stop: asyncio.Event) -> bool:
    """Wait until the coordinator answers a Status call over TLS with our CA (True), or `stop`.

    The first call proves the address and the CA before any device counts as joined (a stored
    identity alone proves neither); a fresh channel per attempt, so a coordinator that comes up
    is found at the next attempt, not after gRPC's own reconnect backoff (up to minutes)."""
    import grpc

    from edge_client.round_client import open_channel
    from protocol.generated import rounds_pb2, rounds_pb2_grpc

    delay = FIRST_RETRY_S
    while not stop.is_set():
        try:
            async with open_channel(options.coordinator, options.ca_pem) as channel:
                await rounds_pb2_grpc.CoordinatorStub(channel).Status(rounds_pb2.StatusRequest(),
                                                                      timeout=REACH_TIMEOUT_S)
            return True
        except grpc.aio.AioRpcError as error:
            _unavailable(error, options, notice, call="Status")
        await process.sleep_or_stop(stop, delay)
        delay = min(delay * 2, MAX_RETRY_S)
    return False


async def _identity(folder: Path, options: FleetOptions, notice: WaitNotice,
                    stop: asyncio.Event) -> DeviceIdentity | None:
    """The device's stored identity for this CA, or a new one from enrolling (retried while the
    coordinator does not answer; a refused token ends it). None if stopped first."""
    import grpc

    from edge_client.round_client import enroll

    store = IdentityStore(folder)
    identity = store.load(options.ca_pem)
    label = _label(folder)
    delay = FIRST_RETRY_S
    while identity is None and not stop.is_set():
        try:
            identity = await enroll(options.coordinator, options.ca_pem, options.enroll_token, store, label=label)
        except grpc.aio.AioRpcError as error:
            _unavailable(error, options, notice, call="Enroll")
            await process.sleep_or_stop(stop, delay)
            delay = min(delay * 2, MAX_RETRY_S)
    return identity


def _unavailable(error: grpc.aio.AioRpcError, options: FleetOptions, notice: WaitNotice, *, call: str = "") -> None:
    """Say what the devices wait for, or raise JoinRefused when waiting cannot help."""
    from edge_client.round_client import JoinRefused, connection_trouble

    try:
        reason = connection_trouble(error, address=options.coordinator, ca_source=options.ca_source, call=call)
    except JoinRefused as refusal:
        if not options.credentials_may_change:
            raise
        reason = f"{refusal}; waiting for new credentials"
    notice.waiting(reason)


def _label(folder: Path) -> str:
    path = folder / LABEL_FILE
    if not path.exists():
        return ""
    try:
        return read_bounded(path, max_bytes=4096, what="device label").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the device label is not UTF-8 text") from None


async def _stoppable(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None as soon as `stop` is set: `work` is then cancelled, so a call in
    flight (a held check-in, a round's phase) does not delay the stop; the coordinator counts
    the device as a dropout."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _cancel([task])
        raise
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    await _cancel([task])
    return None


async def _cancel(tasks: Sequence[asyncio.Future]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


# the process

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--devices-root", type=Path, required=True, help="one device folder per subfolder")
    parser.add_argument("--coordinator", required=True, help="HOST:PORT")
    parser.add_argument("--ca-cert", type=Path, required=True)
    parser.add_argument("--enroll-token-file", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    process.add_process_flags(parser, log_level="WARNING")
    parser.add_argument("--record-uploads", action="store_true",
                        help="each device keeps its own plaintext uploads in <device>/uploads/ (audits, tests)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        level, folders, options = _configure(args)
        configure_logs(level, args.log_format)
        stats = asyncio.run(_run_fleet(folders, options, args.parent_pid))
        atomic_write(args.devices_root / STATS_FILE, json.dumps(stats))
        return 0

    return process.run_main(PROG, args.log_level, body)


def _configure(args: argparse.Namespace) -> tuple[str, list[Path], FleetOptions]:
    """Every flag checked before anything starts (one line naming what is wrong)."""
    from edge_client.round_client import read_ca_certificate

    level = process.check_log_level(args.log_level)
    address = process.check_address(args.coordinator)
    profile = process.check_profile(args.profile)
    seed = process.check_seed(args.seed)
    if args.parent_pid is not None and args.parent_pid != os.getppid():
        raise ValueError(f"--parent-pid {args.parent_pid}: not this process's parent (or it is gone already)")
    folders = _device_folders(args.devices_root)
    ca_pem = process.for_flag("--ca-cert", read_ca_certificate, args.ca_cert)
    token = process.for_flag("--enroll-token-file", process.read_token_file, args.enroll_token_file)
    options = FleetOptions(address, ca_pem, token, profile, seed, args.record_uploads, ca_source=str(args.ca_cert))
    return level, folders, options


def _device_folders(root: Path) -> list[Path]:
    """The device folders under --devices-root (its subfolders, hidden ones aside)."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise ValueError(f"--devices-root {root}: {error.strerror or error}") from None
    if not folders:
        raise ValueError(f"--devices-root {root}: holds no device folders")
    return folders


async def _run_fleet(folders: list[Path], options: FleetOptions, parent_pid: int | None) -> dict[str, dict]:
    stop = asyncio.Event()
    with process.stop_on_signals(stop):
        watcher = asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
        try:
            return await run_devices(folders, options, stop)
        finally:
            if watcher is not None:
                await _cancel([watcher])


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid:
            stop.set()
            return
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
