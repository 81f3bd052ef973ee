"""The executor factory closes the executors it forgets, on the real TFF worker: a run whose cohort
size changes every round (Poisson sampling) keeps a bounded number of executors on the worker."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline import executor_cache


def _factory():
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    return context_stack_impl.context_stack.current.executor_factory


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _client_sum(values):
    return tff.federated_sum(values)


def test_every_evicted_executor_is_closed_on_the_worker_and_results_stay_exact(tff_runtime):
    factory = _factory()
    cache = factory._executors
    assert isinstance(cache, executor_cache._ClosingLRU) and cache.maxsize == executor_cache.DEFAULT_CACHE_SIZE
    seen = []
    sizes = list(range(1, executor_cache.DEFAULT_CACHE_SIZE + 12))  # 11 cohort sizes more than it keeps
    for n in sizes:
        assert _client_sum([1.0] * n) == pytest.approx(n)
        seen.extend(executor for executor in cache.values() if executor not in seen)
    assert len(cache) == executor_cache.DEFAULT_CACHE_SIZE
    open_ids = [executor._executor_id for executor in seen if executor._executor_id is not None]
    assert len(seen) >= len(sizes)
    # What the cache still holds is open; everything else was disposed of on the worker (close()
    # sends DisposeExecutor and forgets the id).
    assert len(open_ids) == len(cache)
    # An evicted size comes back as a new executor, and computes correctly.
    assert _client_sum([2.0] * sizes[0]) == pytest.approx(2.0 * sizes[0])


def test_the_cache_size_must_be_a_positive_integer():
    for bad in (0, -1, 2.5, True, "16"):
        with pytest.raises(ValueError, match="cache_size must be a positive integer"):
            executor_cache.closing_executor_factory(lambda cardinalities: None, cache_size=bad)  # type: ignore[arg-type]
