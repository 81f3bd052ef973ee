"""Interrupting `fedrec simulate` (issue 7, item 5): kill -9 and Ctrl-C leave no TFF worker behind
and a folder that the next command accepts. Real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # real `fedrec simulate` processes, interrupted


def _children_workers(parent: int) -> list[int]:
    """PIDs of TFF worker_binary processes whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0")[0]
        except OSError:
            continue
        if ppid == parent and argv0.endswith(b"/data/worker_binary"):
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Ctrl-C as a terminal delivers it: a shell starts background jobs (and so a CI runner started
# with `&`) with SIGINT ignored, and a process that inherits that never sees it. The child restores
# Python's own handler itself, then runs the module: a preexec_fn would run this process's
# at-fork handlers (gRPC's) in the child (see protocol.children).
_AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _start_training(out: Path) -> tuple[subprocess.Popen, int]:
    """A long run, started as a user would; returns it and its worker's PID once round 2 is saved."""
    process = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_TERMINAL, "fedrec_cli", "simulate", "--rounds", "2000", "--eval-every",
         "1000", "--no-baselines", "--quiet", "--out", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    index = out / "checkpoints" / "checkpoint.json"
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        workers = _children_workers(process.pid)
        if workers and index.exists() and json.loads(index.read_text())["round"] >= 2:
            return process, workers[0]
        time.sleep(0.1)
    process.kill()
    pytest.fail("training did not reach round 2 in 180 s")


def _resume_to_the_end(out: Path) -> dict:
    """Shorten the run (a test only) and let `--resume` finish it; returns the report."""
    done = subprocess.run([sys.executable, "-m", "fedrec_cli", "simulate", "--resume", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _shorten(out: Path, rounds: int) -> None:
    """Make the interrupted run end sooner: rewrite its planned rounds and the checkpoint's digest."""
    from tff_pipeline.config import SimulationConfig
    from tff_pipeline.run_folder import config_digest

    config_file = json.loads((out / "config.json").read_text())
    config_file["config"]["rounds"] = rounds
    (out / "config.json").write_text(json.dumps(config_file))
    index_path = out / "checkpoints" / "checkpoint.json"
    index = json.loads(index_path.read_text())
    index["config_sha256"] = config_digest(SimulationConfig.from_dict(config_file["config"]))
    index_path.write_text(json.dumps(index))


def test_kill_9_leaves_no_worker_and_a_resumable_folder(tmp_path):
    out = tmp_path / "run"
    process, worker = _start_training(out)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), f"worker_binary {worker} outlived its killed parent"
    saved = json.loads((out / "checkpoints" / "checkpoint.json").read_text())["round"]
    _shorten(out, saved + 2)
    report = _resume_to_the_end(out)
    assert [row["round"] for row in report["history"]] == list(range(1, saved + 3))


def test_ctrl_c_says_how_to_continue_and_stops_the_worker(tmp_path):
    out = tmp_path / "run"
    process, worker = _start_training(out)
    process.send_signal(signal.SIGINT)
    try:
        status = process.wait(timeout=60)
    finally:
        stderr = process.stderr.read()
        process.stderr.close()
    assert status == 130, stderr
    assert f"continue with `fedrec simulate --resume {out}`" in stderr and "Traceback" not in stderr
    assert not _alive(worker)


def test_a_burst_of_sigterms_stops_the_run_instead_of_hanging_it(tmp_path):
    """`uv run` forwards SIGTERM to its child and a process-group kill sends another: a second
    SIGTERM arriving while the first one's handler stopped the worker used to deadlock the
    process for good (found with two DP sweeps killed that way)."""
    out = tmp_path / "run"
    process, worker = _start_training(out)
    for _ in range(30):
        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.002)
    try:
        status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("fedrec simulate hung after a burst of SIGTERMs")
    finally:
        process.stderr.close()
    assert status == -signal.SIGTERM
    assert not _alive(worker)
    saved = json.loads((out / "checkpoints" / "checkpoint.json").read_text())["round"]
    assert saved >= 2
