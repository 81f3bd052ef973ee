"""Running `fedrec` as a real process from a test, and reading its one-line refusals."""

from __future__ import annotations

import subprocess
import sys


def fedrec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedrec_cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit status 2 and exactly one `fedrec: error:` line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith("fedrec: error: ")
    return lines[0]
