"""TFF execution runtime that never leaves a `worker_binary` behind.

TFF's default local context launches `tensorflow_federated/data/worker_binary` as a child
process that inherits our stdout/stderr and can outlive Python (seen here: it held a shell pipe
open for 14 minutes). We install the same C++ context, but route the child's output to
/dev/null and stop every child it started at exit, on SIGTERM, and on an explicit `shutdown()`.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import types
from typing import Any

_started: list[subprocess.Popen[bytes]] = []
_lock = threading.Lock()
_installed = False


class _TrackedQuietPopen(subprocess.Popen):
    """Popen that detaches the worker from our stdio and remembers it for shutdown."""

    def __init__(self, args: Any, **kwargs: Any) -> None:
        kwargs.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        super().__init__(args, **kwargs)
        with _lock:
            _started.append(self)


def worker_pids() -> list[int]:
    """PIDs of the TFF workers this process started that are still alive."""
    with _lock:
        return [p.pid for p in _started if p.poll() is None]


def shutdown() -> None:
    """Stop every TFF worker this process started (idempotent)."""
    with _lock:
        processes = list(_started)
        _started.clear()
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _on_sigterm(signum: int, frame: Any) -> None:
    shutdown()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install() -> None:
    """Install TFF's local C++ execution context with tracked, silent workers (idempotent)."""
    global _installed
    if _installed:
        return
    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

    shim = types.SimpleNamespace(**{k: getattr(subprocess, k) for k in dir(subprocess) if not k.startswith("__")})
    shim.Popen = _TrackedQuietPopen
    executor_factory.subprocess = shim  # type: ignore[attr-defined]
    tff.backends.native.set_sync_local_cpp_execution_context()
    atexit.register(shutdown)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
