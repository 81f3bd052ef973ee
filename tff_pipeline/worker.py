"""`fedrec worker --port PORT` (or `python -m tff_pipeline.worker`): one TFF worker service in
the foreground, for `fedrec simulate --workers` and the k8s Deployment (k8s/simulation).

The service is TFF's own `worker_binary`, run as our child rather than exec'd: as a container's
PID 1 the binary would ignore SIGTERM (it installs no handler, and the kernel drops default-action
signals to PID 1), so a pod would wait out its grace period. This process handles SIGTERM and
Ctrl-C, stops the child, and the child has a parent-death SIGKILL, so it never outlives us.
TensorFlow is not imported here: the parent stays small.

`worker_binary` listens on every interface ([::]:PORT) and has no flag to choose one, nor any
authentication: it runs whatever TensorFlow graph it is sent. Run it only on a trusted network
(a cluster-internal Service; on a laptop, a firewalled port).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from protocol import children
from tff_pipeline import runtime
from tff_pipeline.errors import PipelineError

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


class WorkerError(PipelineError, OSError):
    """The worker service could not start (the CLI prints it as one `fedrec: error:` line)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, required=True, help="TCP port to serve on (worker_binary binds all interfaces)")
    p.add_argument("--max-concurrent-calls", type=int, default=-1,
                   help="worker_binary's --max_concurrent_computation_calls (<= 0: no limit; the default)")


def _check_port_free(port: int) -> None:
    """Name the port in use now, rather than watch worker_binary die with a log line about it."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    except OSError:  # IPv6 is off in some containers
        probe, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port)
    with probe:
        # As gRPC does: a port whose last connections are in TIME_WAIT (a worker just stopped) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise WorkerError(f"port {port} is already in use; choose another --port") from None
            raise WorkerError(f"cannot serve on port {port}: {error.strerror}") from None


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(port: int, *, max_concurrent_calls: int = -1) -> subprocess.Popen[bytes]:
    """Start worker_binary on `port` (its logs on our stderr) and wait until it accepts connections."""
    if not 1 <= port <= 65535:
        raise WorkerError(f"--port must be from 1 to 65535, got {port}")
    _check_port_free(port)
    argv = children.exec_argv(str(runtime.worker_binary_path()), f"--port={port}",
                              f"--max_concurrent_computation_calls={max_concurrent_calls}")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=2)  # its log lines: our stderr
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not _accepts_connections(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise WorkerError(f"the TFF worker did not start on port {port} (exit code {process.returncode})")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS; idempotent."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(port: int, *, max_concurrent_calls: int = -1) -> int:
    """Run the service until SIGTERM/SIGINT (exit 0) or until worker_binary dies (exit 1)."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        process = start(port, max_concurrent_calls=max_concurrent_calls)
        try:
            print(f"fedrec worker: TFF worker service (pid {process.pid}) listening on [::]:{port}, all interfaces; "
                  f"use it with `fedrec simulate --workers HOST:{port}`; stop with Ctrl-C or SIGTERM", flush=True)
            while process.poll() is None and not stopping.wait(0.2):
                pass
        finally:
            stop(process)
        if not stopping.is_set():
            print(f"fedrec worker: the TFF worker on port {port} exited with code {process.returncode}",
                  file=sys.stderr)
            return 1
        print(f"fedrec worker: stopped the TFF worker on port {port}", flush=True)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Sets the CPU affinity, then becomes the worker service (its worker_binary inherits the affinity
# before it starts any thread, which a later sched_setaffinity of a running process would miss).
_EXEC_ON_CPUS = """
import os, sys
os.sched_setaffinity(0, {int(cpu) for cpu in sys.argv[1].split(",")})
os.execv(sys.executable, [sys.executable, "-m", "tff_pipeline.worker", *sys.argv[2:]])
"""


@dataclasses.dataclass(frozen=True)
class LocalService:
    port: int
    pid: int  # of the `python -m tff_pipeline.worker` process
    worker_pid: int  # of its worker_binary


_READY_LINE = re.compile(r"TFF worker service \(pid (\d+)\) listening on")


@contextlib.contextmanager
def local_services(count: int, *, cpu_sets: Sequence[set[int]] | None = None) -> Iterator[list[LocalService]]:
    """`count` worker services (`python -m tff_pipeline.worker`) on free ports of this machine, for
    tests and bench/: yields them once all accept connections, stops them all on exit.
    `cpu_sets[i]`: the CPUs service i may use (Linux), to measure workers that do not share cores."""
    import portpicker

    processes: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for index in range(count):
            port = portpicker.pick_unused_port()
            argv = [sys.executable, "-m", "tff_pipeline.worker", "--port", str(port)]
            if cpu_sets is not None:
                argv = [sys.executable, "-c", _EXEC_ON_CPUS, ",".join(map(str, sorted(cpu_sets[index]))),
                        "--port", str(port)]
            processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True))
            ports.append(port)
        services = []
        for port, process in zip(ports, processes):
            ready = _READY_LINE.search(process.stdout.readline() if process.stdout else "")
            if ready is None:
                raise WorkerError(f"the worker service on port {port} did not start (exit code {process.wait()})")
            services.append(LocalService(port, process.pid, int(ready.group(1))))
        yield services
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS + 5)
            except subprocess.TimeoutExpired:  # its worker_binary dies with it (parent-death signal)
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tff_pipeline.worker", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args.port, max_concurrent_calls=args.max_concurrent_calls)
    except WorkerError as error:
        print(f"fedrec worker: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
