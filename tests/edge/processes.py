"""Device processes for tests: `fedrec-edge join`, `python -m edge_client.fleet` and `edge_client.pod`
as real processes on loopback, with TensorFlow (and the server packages) made unimportable, so
every test that runs one also proves the device side never imports them.

Output goes to files (read while the process runs, no pipe to fill). Nothing outlives its test:
`kill_leftovers` (an autouse fixture in the test modules) kills what a failed test left running,
and each child gets SIGKILL as its parent-death signal (not SIGTERM: what is under test may be a
device that ignores SIGTERM).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from protocol import children

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "tff_pipeline", "coordinator")
# gRPC C-core log lines ("I0000 00:00:17... ssl_transport_security.cc:1756] Handshake failed ...").
CORE_LOG_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog", re.MULTILINE)
PROMPT_STOP_S = 5.0  # "promptly": a stopped device process is gone within this


def no_tensorflow_env(folder: Path, *, allow: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment in which importing TensorFlow or the server packages fails loudly
    (`allow`: packages a simulated edge pod needs, e.g. tff_pipeline for its numpy-only data)."""
    for name in BLOCKED:
        if name in allow:
            continue
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on a device')\n")
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}  # the device's own default is tested
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO_ROOT)])
    return env


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_STARTED: list[subprocess.Popen] = []


def kill_leftovers() -> None:
    """Kill every device process a test started and left running (a test that failed midway)."""
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclasses.dataclass
class DeviceProcess:
    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, pattern: str, *, stream: str = "stdout", timeout_s: float = 60.0) -> re.Match[str]:
        """The first match of `pattern` in the stream, once it is there (fails if the process ends first)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.stdout if stream == "stdout" else self.stderr, re.MULTILINE)
            if match:
                return match
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode} before {pattern!r}: {self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout_s} s: {self.output()}")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `signum`; (exit status, seconds it took to exit). Killed if it does not stop."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running 30 s after signal {signum}: {self.output()}") from None
        return code, time.monotonic() - started

    def finish(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running after {timeout_s} s: {self.output()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return f"stdout: {self.stdout[-2000:]!r} stderr: {self.stderr[-3000:]!r}"


def start(module: str, args: tuple[str, ...], env: dict[str, str], folder: Path, name: str) -> DeviceProcess:
    """`python -m MODULE ARGS` with its output in `folder/name.out` and `folder/name.err`; the kernel
    kills it if this process dies (started without a preexec_fn: see protocol.children)."""
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(children.module_argv(module, *args, death_signal=signal.SIGKILL), env=env,
                                   cwd=folder, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    _STARTED.append(process)
    return DeviceProcess(process, out, err)


def edge(env: dict[str, str], folder: Path, name: str, *args: str) -> DeviceProcess:
    return start("edge_client.cli", args, env, folder, name)


def fleet(env: dict[str, str], folder: Path, name: str, *args: str) -> DeviceProcess:
    return start("edge_client.fleet", args, env, folder, name)


def pod(env: dict[str, str], folder: Path, name: str, *args: str) -> DeviceProcess:
    return start("edge_client.pod", args, env, folder, name)


def one_error_line(done: DeviceProcess, prog: str) -> str:
    """The process's only stderr line, `PROG: error: ...`, after it exited with status 2."""
    code = done.finish()
    assert code == 2, (code, done.output())
    assert "Traceback" not in done.stderr and not CORE_LOG_LINE.search(done.stderr), done.output()
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.output()
    return lines[0]
