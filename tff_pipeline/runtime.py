"""TFF's local C++ execution context, with a worker that can never outlive us.

TFF's own `set_sync_local_cpp_execution_context` starts `tensorflow_federated/data/worker_binary`
with a plain `subprocess.Popen`: the worker inherits our stdout/stderr and outlives Python
(seen here: it held a shell pipe open for 14 minutes; after `kill -9` of `fedrec simulate` it
was re-parented to init every time, ~124 MB). This module builds the same context from the
same TFF parts (a `RemoteExecutor` over a gRPC stub, in a `ResourceManagingExecutorFactory`,
in a `SyncExecutionContext`), but owns the worker process:
- its output goes to /dev/null;
- it gets a parent-death signal (Linux `PR_SET_PDEATHSIG` = SIGKILL), so the kernel kills it
  when we die, however we die. The signal fires when the *thread* that forked the child exits,
  so the worker is forked by a keeper thread that lives as long as the process, through
  `protocol.children`'s exec wrapper (a `preexec_fn` is unsafe with TensorFlow's threads);
- `shutdown()` (also at exit and on SIGTERM) stops it.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import children

# Re-entrant: the SIGTERM handler runs on the main thread, which may be inside `stub()` holding it.
_lock = threading.RLock()
_installed = False
_READY_POLL_SECONDS = 0.05
_START_TIMEOUT_SECONDS = 60.0
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000  # as TFF's own local factory
GRPC_OPTIONS = [
    ("grpc.max_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
]

def import_training_stack() -> None:
    """Import TensorFlow and TFF once, dropping only their harmless CPU start-up lines. Commands
    call it after every check that needs no TensorFlow, so a refusal stays fast."""
    from edge_client.native_log import TENSORFLOW_CPU_NOISE, filtered_stderr

    with filtered_stderr(TENSORFLOW_CPU_NOISE):
        import tensorflow  # noqa: F401 - imported for its one-time start-up, under the filter
        import tensorflow_federated  # noqa: F401 - likewise


def worker_binary_path() -> Path:
    """TFF's C++ worker, `tensorflow_federated/data/worker_binary`, found without importing TFF."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tensorflow_federated is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "data" / "worker_binary"
    if not binary.is_file():
        raise RuntimeError(f"TFF's worker binary is missing at {binary}")
    return binary.resolve()


class _Keeper:
    """One thread, alive for the life of the process, that forks every worker."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Callable[[], Any], queue.Queue]] = queue.Queue()
        threading.Thread(target=self._serve, name="tff-worker-keeper", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, reply = self._requests.get()
            try:
                reply.put((True, fn()))
            except BaseException as error:  # noqa: BLE001 - handed back to the caller, who raises it
                reply.put((False, error))
            del fn, reply

    def run(self, fn: Callable[[], Any]) -> Any:
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


class _LocalWorker:
    """The one local `worker_binary` and the gRPC stub that reaches it (restarted if it dies)."""

    def __init__(self, binary: Path, keeper: _Keeper) -> None:
        self._binary = binary
        self._keeper = keeper
        self._process: subprocess.Popen[bytes] | None = None
        self._stub: Any = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def stub(self) -> Any:
        with _lock:
            if self._stub is not None and self._stub.is_ready:
                return self._stub
            self._stop_locked()
            self._stub = self._start_locked()
            return self._stub

    def stop(self) -> None:
        with _lock:
            self._stop_locked()

    def _start_locked(self) -> Any:
        import grpc
        import portpicker
        from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub

        port = portpicker.pick_unused_port()
        argv = children.exec_argv(str(self._binary), f"--port={port}", "--max_concurrent_computation_calls=-1")
        process = self._process = self._keeper.run(lambda: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        channel = grpc.insecure_channel(f"localhost:{port}", GRPC_OPTIONS)
        stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not stub.is_ready:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TFF worker {self._binary} did not start (exit code {process.poll()})")
            time.sleep(_READY_POLL_SECONDS)
        return stub

    def _stop_locked(self) -> None:
        process, self._process, self._stub = self._process, None, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_worker: _LocalWorker | None = None


def worker_pids() -> list[int]:
    """PIDs of the TFF workers this process started that are still alive."""
    pid = None if _worker is None else _worker.pid
    return [] if pid is None else [pid]


def shutdown() -> None:
    """Stop the TFF worker this process started (idempotent; the next computation restarts it)."""
    if _worker is not None:
        _worker.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop the worker, then die of the signal. Repeats are ignored while the worker stops: a
    second SIGTERM (`uv run` forwards one, a process-group kill sends another) used to re-enter
    this handler inside the first and wait forever for the lock the first one held."""
    signal.signal(signum, signal.SIG_IGN)
    try:
        shutdown()
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def compile_for_worker(computation: Any) -> Any:
    """TFF's native compilation, after turning secure sums into plain (modular) sums of TensorFlow.

    TFF's C++ worker has no secure-sum intrinsics; in a simulation they stand for what SecAgg+
    computes in a deployment (TFF's own test compiler does the same). Distributed DP's
    `DistributedDpSumFactory` sums through them."""
    from tensorflow_federated.python.core.backends.native import compiler
    from tensorflow_federated.python.core.backends.test import compiler as secure_intrinsics

    computation = secure_intrinsics.replace_secure_intrinsics_with_bodies(computation)
    return compiler.desugar_and_transform_to_native(computation)


def allow_deep_computations() -> None:
    """Let protobuf's upb runtime copy TFF computations nested deeper than its default limit of
    100 levels. TFF builds a computation's proto by copying nested building blocks; distributed DP's
    factory (rotation, clipping, discretization, DP query and two modular clips inside one another)
    nests past the limit, which upb reports as "DecodeError: Error parsing message". Its
    `SetAllowOversizeProtos` lifts that depth limit (pure-Python protobuf has none, but runs TFF
    ~9x slower here)."""
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() == "upb":
        from google._upb import _message

        _message.SetAllowOversizeProtos(True)


def install() -> None:
    """Make this context TFF's default (idempotent)."""
    global _installed, _worker
    if _installed:
        return
    allow_deep_computations()
    from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
    from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
    from tensorflow_federated.python.core.impl.executors import remote_executor
    from tensorflow_federated.python.core.impl.types import placements

    from tff_pipeline import executor_cache

    _worker = _LocalWorker(worker_binary_path(), _Keeper())

    def stack_fn(cardinalities: dict) -> Any:
        if cardinalities.get(placements.CLIENTS) is None:
            cardinalities[placements.CLIENTS] = 0
        executor = remote_executor.RemoteExecutor(_worker.stub(), stream_structs=False)
        executor.set_cardinalities(cardinalities)
        return executor

    context = sync_execution_context.SyncExecutionContext(
        executor_fn=executor_cache.closing_executor_factory(stack_fn),
        compiler_fn=compile_for_worker,
        transform_args=tensorflow_computation.transform_args,
        transform_result=tensorflow_computation.transform_result,
    )
    context_stack_impl.context_stack.set_default_context(context)
    atexit.register(shutdown)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
