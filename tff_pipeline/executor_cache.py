"""An executor factory that closes the executors it forgets.

TFF keeps one executor per client cardinality in `ResourceManagingExecutorFactory`, an LRU of 10
that drops the least recent executor *without closing it*. On a TFF worker (`worker_binary`, or a
`fedrec worker`) every executor holds its own copy of the computations it ran, so a dropped but
unclosed executor stays in the worker's memory for good. Under Poisson sampling every round can
have a new cohort size: measured with `fedrec simulate --synthetic-users 20000 --dp fixed`
(cohorts 920-1080), the worker grew by ~7 MB per round, 0.47 -> 2.3 GB over 270 rounds, while a
fixed cohort size stayed at ~0.23 GB. Closing an evicted executor sends the worker its
`DisposeExecutor`, which frees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cachetools  # type: ignore[import]  # no stubs in the lock (types-cachetools)

# Executors kept open: enough for every cardinality one round uses (training, evaluation) and
# the most frequent cohort sizes, each a few MB on the worker.
DEFAULT_CACHE_SIZE = 16


class _ClosingLRU(cachetools.LRUCache):
    """An LRU cache of executors that closes the one it evicts."""

    def popitem(self) -> tuple[Any, Any]:
        key, executor = super().popitem()
        executor.close()
        return key, executor


def closing_executor_factory(executor_stack_fn: Callable[[dict], Any], *, cache_size: int = DEFAULT_CACHE_SIZE) -> Any:
    """TFF's `ResourceManagingExecutorFactory` over `executor_stack_fn`, with an LRU of
    `cache_size` executors that closes each executor it evicts (see the module docstring)."""
    from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks

    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
    factory = python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=executor_stack_fn)
    if not isinstance(getattr(factory, "_executors", None), cachetools.LRUCache):  # TFF changed inside
        raise RuntimeError("this TFF's ResourceManagingExecutorFactory keeps no LRU cache of executors to bound")
    factory._executors = _ClosingLRU(cache_size)
    return factory
