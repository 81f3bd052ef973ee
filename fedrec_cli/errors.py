"""How the command line ends: the project's own errors are the user's to fix (one line, exit 2);
any other exception is a bug, reported as one with its traceback kept in a log file (exit 1)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from protocol.errors import FedrecError
from protocol.messages import one_line
from tff_pipeline.config import ConfigError

PROG = "fedrec"
EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


# After an interruption the process must end even if a library left a non-daemon thread blocked
# (a TFF executor thread waiting on the worker just stopped): Python's exit would join it forever.
EXIT_GRACE_SECONDS = 10.0


def end_within(status: int, seconds: float | None = None) -> None:
    """Let the interpreter exit normally, but end the process with `status` if that takes longer
    than `seconds` (default EXIT_GRACE_SECONDS; a daemon thread: it outlives the joins that could
    hang)."""
    grace = EXIT_GRACE_SECONDS if seconds is None else seconds

    def cut() -> None:
        time.sleep(grace)
        sys.stderr.flush()
        os._exit(status)

    threading.Thread(target=cut, name="fedrec-exit-grace", daemon=True).start()


def crash_log_dir() -> Path:
    """Where a bug's traceback goes: $FEDREC_LOG_DIR, else the system's temporary folder."""
    return Path(os.environ.get("FEDREC_LOG_DIR") or tempfile.gettempdir())


def report_error(error: BaseException, parser: argparse.ArgumentParser | None) -> int:
    """Print how `error` ended the command and return the exit status."""
    if isinstance(error, KeyboardInterrupt):
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, ConfigError):
        from fedrec_cli.training_flags import flag_of

        flag = "--resume" if error.field == "resume" or parser is None else flag_of(parser, error.field)
        return _user_error(f"{flag}: {error.message}")
    if isinstance(error, FedrecError):
        return _user_error(str(error))
    if isinstance(error, OSError) and error.errno is not None:
        # The environment, not a bug: a full disk, a missing permission, a path that is a file.
        where = f": {error.filename}" if error.filename is not None else ""
        return _user_error(f"{error.strerror or error}{where}")
    return _bug(error)


def _user_error(message: str) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _bug(error: BaseException) -> int:
    text = "".join(traceback.format_exception(error))
    summary = one_line(f"{type(error).__name__}: {error}")
    try:
        folder = crash_log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"fedrec-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log",
                                    dir=folder)
        with os.fdopen(fd, "w") as log:
            log.write(f"fedrec {' '.join(sys.argv[1:])}\n{text}")
        where = f"the traceback is in {name}"
    except OSError as log_error:  # nowhere to write: the traceback goes to stderr instead
        print(text, file=sys.stderr, end="")
        where = f"could not write a log ({log_error.strerror}); the traceback is above"
    print(f"{PROG}: internal error (a bug; please report it): {summary}\n{PROG}: {where}", file=sys.stderr)
    return EXIT_BUG
