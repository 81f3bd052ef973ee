"""Child processes that end when their parent does, started without a `preexec_fn`.

Linux delivers a parent-death signal (`PR_SET_PDEATHSIG`) to a child when the thread that forked
it exits, however it exits (kill -9 included). The obvious way to set it, a `preexec_fn`, makes
`subprocess` fork instead of vfork and run Python between fork and exec, which runs every
library's at-fork handlers in the child: gRPC then logs `Kick failed: eventfd_write: Bad file
descriptor` into the child's stderr (seen in CI), and TensorFlow's threads can deadlock it. So
the child is a fresh interpreter that sets the signal on itself, checks its parent is still the
one that started it (it may have died before `prctl` took effect), then becomes the target.
"""

from __future__ import annotations

import os
import signal
import sys

# argv: PARENT_PID SIGNAL exec|module TARGET ARGS...
_BOOT = """
import ctypes, os, sys
parent, signum, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    os._exit(1)
if how == "exec":
    os.execvp(sys.argv[4], sys.argv[4:])
import runpy
sys.argv = sys.argv[4:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def exec_argv(program: str, *args: str, death_signal: int = signal.SIGKILL) -> list[str]:
    """The command that execs `program args...` (looked up on PATH) with a parent-death signal.
    The boot interpreter runs isolated (`-I`): it imports nothing but ctypes."""
    return [sys.executable, "-I", "-c", _BOOT, str(os.getpid()), str(int(death_signal)), "exec", program, *args]


def module_argv(module: str, *args: str, death_signal: int = signal.SIGTERM) -> list[str]:
    """The command that runs `python -m module args...` with a parent-death signal. Not isolated:
    the module is found through the environment's PYTHONPATH as `python -m` would find it."""
    return [sys.executable, "-c", _BOOT, str(os.getpid()), str(int(death_signal)), "module", module, *args]
