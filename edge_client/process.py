"""What every long-running device process shares (`fedrec-edge join`, `python -m edge_client.fleet`,
`python -m edge_client.pod`): checks of its flags, quiet gRPC, and stopping on SIGTERM/SIGINT.

A flag gRPC would accept and then fail on forever (an address with no port, an unknown profile)
is refused before anything starts, as one line naming it. A stop signal ends the process
promptly and quietly in every state: Kubernetes stops pods with SIGTERM, a user with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from edge_client.errors import DeviceError
from edge_client.profiles import fleet_profiles
from protocol.addresses import AddressError, parse_host_port
from protocol.files import read_bounded
from protocol.messages import one_line

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_TOKEN_CHARS = 1024
T = TypeVar("T")


def quiet_grpc(log_level: str) -> None:
    """Keep gRPC's C core from writing its own log to stderr, unless --log-level DEBUG.

    The core logs every failed connection attempt ("I0000 ... Handshake failed", "E0000 ..."
    lines, again at each retry). The device reports the same failures itself, from the failed
    call's status, as one rate-limited line in its own words, so the core's copy is only noise
    that reads like a crash; DEBUG brings it back for diagnosing gRPC itself, and a
    GRPC_VERBOSITY set by the user always wins. The core reads the variable when grpc is first
    imported, so this must run before that (a no-op after it).
    """
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if log_level.strip().upper() == "DEBUG" else "NONE")


def check_log_level(value: str) -> str:
    """The logging level name of --log-level (any case)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"--log-level {value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


def check_address(value: str, flag: str = "--coordinator") -> str:
    """HOST:PORT (a host name, an IPv4 address or a [bracketed] IPv6 one): gRPC takes any string
    and retries a malformed one forever, so it is refused here."""
    try:
        parse_host_port(value)
    except AddressError as error:
        raise ValueError(f"{flag} {error}") from None
    return value


def check_profile(name: str) -> str:
    """A device profile name `fleet_profiles` knows."""
    try:
        fleet_profiles(name, 0, seed=0)
    except ValueError as error:
        raise ValueError(f"--profile: {error}") from None
    return name


def check_seed(value: int, flag: str = "--seed") -> int:
    """A seed numpy's generators take (not negative)."""
    if value < 0:
        raise ValueError(f"{flag} {value}: must not be negative")
    return value


def check_token(token: str, source: str) -> str:
    """An enrollment token: one line of printable text (it travels in a protobuf string)."""
    if not token:
        raise ValueError(f"{source}: the enrollment token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"{source}: the enrollment token is longer than {MAX_TOKEN_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in token):  # control, surrogate (undecodable), ...
        raise ValueError(f"{source}: the enrollment token holds control or undecodable characters")
    return token


def read_token_file(path: Path) -> str:
    """The enrollment token in `path` (surrounding white space removed), refused naming the file."""
    data = read_bounded(path, max_bytes=64 * 1024, what="enrollment token file")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the enrollment token file is not UTF-8 text") from None
    return check_token(text, str(path))


def for_flag(flag: str, read: Callable[[Path], T], path: Path) -> T:
    """`read(path)`, its refusal (a ValueError naming the file) prefixed with the flag that gave it."""
    try:
        return read(path)
    except ValueError as error:
        raise ValueError(f"{flag} {error}") from None


def device_folder(path: Path | str) -> Path:
    """`path` with "~" expanded (refused as a DeviceError naming it when it cannot be)."""
    try:
        return Path(path).expanduser()
    except RuntimeError as error:  # "~user" of no such user, or no home directory
        raise DeviceError(f"{path}: cannot expand the device folder's '~': {error}") from None


@contextlib.contextmanager
def quiet_stop_signals() -> Iterator[None]:
    """Until an event loop takes them over (`stop_on_signals`), SIGTERM and SIGINT end the process
    at once with status 0 and no traceback (a stop during start-up: imports, preparing data)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _install_quiet_exit()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Within the running loop: SIGTERM and SIGINT set `stop` (the devices end their calls and the
    process writes what it has); afterwards the handlers from before are back (`quiet_stop_signals`')."""
    loop = asyncio.get_running_loop()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)  # sets the default handler, so:
            if handler is not None:
                signal.signal(signum, handler)


def _install_quiet_exit() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_quietly)


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


def add_process_flags(parser: argparse.ArgumentParser, *, log_level: str) -> None:
    """The flags every long-running device process takes (profile, logging)."""
    parser.add_argument("--profile", default="ideal", help="ideal | mixed | heterogeneous | slow | drop-after-masking")
    parser.add_argument("--log-level", default=log_level, help=f"DEBUG also shows gRPC's own log (default {log_level})")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")


def run_main(prog: str, log_level: str, body: Callable[[], int]) -> int:
    """A device process's main: gRPC kept quiet, a stop during start-up quiet, and a refusal (any
    ValueError or OSError: JoinRefused, DeviceError, FileRefused, ...) one line `PROG: error: ...`
    with status 2."""
    quiet_grpc(log_level)
    with quiet_stop_signals():
        try:
            return body()
        except (ValueError, OSError) as error:
            print(f"{prog}: error: {one_line(str(error))}", file=sys.stderr)
            return 2
