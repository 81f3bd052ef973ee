"""TFF's execution context over remote worker services (`fedrec simulate --workers`).

TFF 0.87.0 spreads one computation over several workers with its *mergeable computation* context
(`tff.backends.native.compile_to_mergeable_comp_form` + `tff.framework.MergeableCompExecutionContext`):
each round is compiled to up_to_merge / merge / after_merge, the CLIENTS-placed argument (the
cohort) is cut into one contiguous slice per worker, every worker runs the client work and the
aggregation's accumulate on its slice, the partial aggregates are merged, and after_merge (the
server update) runs once. (The C++ composing executor and `create_remote_cpp_execution_context`
of earlier TFF releases are gone from 0.87.0.) Each worker is reached as in runtime.py, through
TFF's `RemoteExecutor` over a gRPC stub, in an `AsyncExecutionContext`.

Two things are ours:
- TFF's `RemoteExecutor` makes blocking gRPC calls inside its coroutines, so on the mergeable
  context's one event loop the workers would run one after the other. `_OwnLoopContext` gives
  each worker's context its own event-loop thread (gRPC releases the GIL while it waits).
- TFF retries UNAVAILABLE forever (`AsyncExecutionContext.invoke` is `@retrying.retry`), so an
  unreachable worker would hang the run. Every executor is created only once its channel is
  READY within `connect_timeout`, or `WorkerUnreachable` names the address (not retried).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from tff_pipeline.errors import PipelineError
from tff_pipeline.runtime import GRPC_OPTIONS
from tff_pipeline.worker_address import WorkerAddress

CONNECT_TIMEOUT_SECONDS = 20.0
# Grappler logs this at ERROR level for each graph without fetch nodes that the mergeable
# compiler hands it (tens per run); it is harmless: such a graph has nothing to optimize.
COMPILE_NOISE = (
    re.compile(r"grappler_item_builder\.cc:\d+\] Failed to detect the fetch node\(s\), skipping this input"),
)


class WorkerUnreachable(PipelineError, ConnectionError):
    """A TFF worker service did not answer within the connect timeout (never retried by TFF)."""

    def __init__(self, address: WorkerAddress, timeout: float) -> None:
        self.address = address
        super().__init__(f"--workers: the TFF worker {address} is unreachable (no gRPC connection within "
                         f"{timeout:g} s); start it with `fedrec worker --port {address.port}` on {address.host}")


# grpc's connectivity poller checks a closed channel, and raises in its thread ("Cannot invoke
# RPC: Channel closed!"), if the channel is closed within one poll period (0.2 s) of a second
# subscription to it (`channel_ready_future` after the stub's own). Closing waits this long after one.
_POLL_SETTLE_SECONDS = 0.3


def _await_ready(channel: grpc.Channel, address: WorkerAddress, timeout: float, reported_timeout: float) -> None:
    """Wait for READY (asking gRPC to connect, also from IDLE after a lost connection)."""
    future = grpc.channel_ready_future(channel)
    try:
        future.result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise WorkerUnreachable(address, reported_timeout) from None
    finally:
        future.cancel()


def check_reachable(addresses: Sequence[WorkerAddress], *, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail fast, before TensorFlow is even imported, if a worker does not answer (gRPC only).
    The channels connect concurrently, so one deadline bounds the wait for them all."""
    channels = [(address, grpc.insecure_channel(str(address), GRPC_OPTIONS)) for address in addresses]
    futures = [grpc.channel_ready_future(channel) for _, channel in channels]  # each starts connecting
    deadline = time.monotonic() + timeout
    try:
        for (address, _), future in zip(channels, futures):
            try:
                future.result(timeout=max(0.5, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                raise WorkerUnreachable(address, timeout) from None
    finally:
        for future in futures:
            future.cancel()
        for _, channel in channels:
            channel.close()


class _RemoteWorker:
    """One worker service: its channel, stub, and an executor factory that checks it is reachable."""

    def __init__(self, address: WorkerAddress, connect_timeout: float) -> None:
        from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub

        self.address = address
        self.connect_timeout = connect_timeout
        self.channel = grpc.insecure_channel(str(address), GRPC_OPTIONS)
        self.stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self.channel)  # starts connecting
        self._subscribed_at = -math.inf

    def wait_ready(self, timeout: float | None = None) -> None:
        if self.stub.is_ready:
            return
        self._subscribed_at = time.monotonic()
        _await_ready(self.channel, self.address, self.connect_timeout if timeout is None else timeout,
                     self.connect_timeout)

    def executor(self, cardinalities: dict) -> Any:
        from tensorflow_federated.python.core.impl.executors import remote_executor
        from tensorflow_federated.python.core.impl.types import placements

        if cardinalities.get(placements.CLIENTS) is None:
            cardinalities[placements.CLIENTS] = 0
        self.wait_ready()
        executor = remote_executor.RemoteExecutor(self.stub, stream_structs=False)
        executor.set_cardinalities(cardinalities)
        return executor

    def close(self) -> None:
        time.sleep(max(0.0, self._subscribed_at + _POLL_SETTLE_SECONDS - time.monotonic()))
        self.channel.close()


def _own_loop_context(inner: Any) -> Any:
    """An AsyncContext that runs `inner`'s invocations on an event-loop thread of its own."""
    from tensorflow_federated.python.common_libs import async_utils
    from tensorflow_federated.python.core.impl.context_stack import context_base

    class _OwnLoopContext(context_base.AsyncContext):
        def __init__(self) -> None:
            self._runner = async_utils.AsyncThreadRunner()

        async def invoke(self, comp: Any, arg: Any) -> Any:
            return await self._runner.await_coro_and_return_result(inner.invoke(comp, arg))

    return _OwnLoopContext()


def build_context(workers: Sequence[_RemoteWorker], *, loop_per_worker: bool = True) -> Any:
    """TFF's mergeable-computation context over one remote context per worker (`loop_per_worker`
    False: all on the mergeable context's one event loop, as TFF ships it; for bench/ only)."""
    from tensorflow_federated.python.core.backends.native import compiler, mergeable_comp_compiler
    from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
    from tensorflow_federated.python.core.impl.execution_contexts import (
        async_execution_context,
        mergeable_comp_execution_context,
    )

    from tff_pipeline import executor_cache

    wrap = _own_loop_context if loop_per_worker else (lambda context: context)
    contexts = [
        wrap(async_execution_context.AsyncExecutionContext(
            executor_fn=executor_cache.closing_executor_factory(worker.executor),
            compiler_fn=compiler.desugar_and_transform_to_native,
            transform_args=tensorflow_computation.transform_args,
            transform_result=tensorflow_computation.transform_result,
        ))
        for worker in workers
    ]
    return mergeable_comp_execution_context.MergeableCompExecutionContext(
        async_contexts=contexts,
        compiler_fn=mergeable_comp_compiler.compile_to_mergeable_comp_form,
        transform_result=tensorflow_computation.transform_result,
    )


@contextlib.contextmanager
def using_workers(addresses: Sequence[WorkerAddress], *, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                  loop_per_worker: bool = True) -> Iterator[None]:
    """Run the TFF computations of this thread on these worker services, inside the block.

    Every worker must answer within `connect_timeout` before anything runs (WorkerUnreachable
    otherwise); a worker lost later fails the round with the same error after the same wait.
    """
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    workers = [_RemoteWorker(address, connect_timeout) for address in addresses]
    try:
        deadline = time.monotonic() + connect_timeout  # the channels connect concurrently: one deadline
        for worker in workers:
            worker.wait_ready(max(0.5, deadline - time.monotonic()))
        with context_stack_impl.context_stack.install(build_context(workers, loop_per_worker=loop_per_worker)):
            yield
    finally:
        for worker in workers:
            worker.close()
