"""How `fedrec` ends: the project's own errors are one line and status 2, the environment's
(a full disk, a missing permission) too, and anything else is a bug: status 1, a short message
and the path of a log holding the traceback, never a silent status 2."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fedrec_cli.main as cli
from coordinator.errors import StateError
from edge_client.errors import DeviceError
from protocol.errors import FedrecError
from protocol.manifest import ManifestError
from secagg.errors import SecAggError
from tff_pipeline.config import ConfigError
from tff_pipeline.data.errors import DataError


def _run_raising(monkeypatch, capsys, error: BaseException, command: str = "status") -> tuple[int, str]:
    parser, commands = cli.build_parser()

    def raise_it(args):
        raise error

    original = cli.build_parser

    def patched():
        parser, commands = original()
        commands[command] = (commands[command][0], raise_it)
        return parser, commands

    monkeypatch.setattr(cli, "build_parser", patched)
    code = cli.main([command])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("error", [StateError("state: damaged"), DeviceError("no such model"),
                                   ManifestError("bad manifest"), SecAggError("bad share"),
                                   DataError("bad row", path="r.csv", line=3)])
def test_a_project_error_is_one_line_and_status_2(monkeypatch, capsys, error):
    assert isinstance(error, FedrecError)
    code, err = _run_raising(monkeypatch, capsys, error)
    assert code == 2
    assert err == f"fedrec: error: {error}\n"


def test_a_config_error_names_the_flag(monkeypatch, capsys):
    code, err = _run_raising(monkeypatch, capsys, ConfigError("rounds", "must be at least 1"), command="simulate")
    assert (code, err) == (2, "fedrec: error: --rounds: must be at least 1\n")


def test_an_environment_error_is_status_2(monkeypatch, capsys):
    code, err = _run_raising(monkeypatch, capsys, OSError(errno.ENOSPC, "No space left on device", "/full/x"))
    assert (code, err) == (2, "fedrec: error: No space left on device: /full/x\n")


@pytest.mark.parametrize("bug", [ValueError("a value nobody checked"), KeyError("missing"), ZeroDivisionError("x"),
                                 OSError("an OSError without an errno")])
def test_any_other_exception_is_a_bug_with_its_traceback_in_a_log(monkeypatch, capsys, tmp_path, bug):
    monkeypatch.setenv("FEDREC_LOG_DIR", str(tmp_path))
    code, err = _run_raising(monkeypatch, capsys, bug)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"fedrec: internal error (a bug; please report it): {type(bug).__name__}")
    logged = re.fullmatch(r"fedrec: the traceback is in (\S+)", lines[1])
    assert logged, lines[1]
    text = open(logged.group(1)).read()
    assert "Traceback (most recent call last)" in text and "raise_it" in text and type(bug).__name__ in text


def test_an_interruption_is_status_130(monkeypatch, capsys):
    code, err = _run_raising(monkeypatch, capsys, KeyboardInterrupt())
    assert (code, err) == (130, "fedrec: interrupted\n")


def test_an_interrupted_command_ends_even_if_a_thread_would_hold_the_exit(tmp_path):
    """A library thread left blocked (a TFF executor thread on a stopped worker) would make
    Python's exit wait forever: the interrupted command still ends, with status 130."""

    script = tmp_path / "interrupted.py"
    script.write_text(
        "import sys, threading\n"
        "import fedrec_cli.errors as errors\n"
        "import fedrec_cli.main as cli\n"
        "errors.EXIT_GRACE_SECONDS = 1.0\n"
        "original = cli.build_parser\n"
        "def patched():\n"
        "    parser, commands = original()\n"
        "    def run(args):\n"
        "        threading.Thread(target=threading.Event().wait).start()  # never ends, not a daemon\n"
        "        raise KeyboardInterrupt\n"
        "    commands['status'] = (commands['status'][0], run)\n"
        "    return parser, commands\n"
        "cli.build_parser = patched\n"
        "sys.argv = ['fedrec', 'status']\n"
        "cli.entry()\n")
    started = time.monotonic()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 130, done.stderr
    assert done.stderr == "fedrec: interrupted\n"
    assert time.monotonic() - started < 30
