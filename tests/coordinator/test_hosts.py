"""A managed host (an edge pod) that goes away takes its devices out of the round at once."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from coordinator.hosts import MAX_HOST_NAME, HostDirectory
from coordinator.round_run import RoundTiming
from coordinator.selection import CheckInPool, ComeBack
from secagg.stages import Stage
from tests.coordinator.test_round_logic import LENGTH, _device, _round


def test_the_directory_knows_each_devices_host_and_forgets_a_gone_one():
    hosts = HostDirectory()
    hosts.saw("a", "edge-0")
    hosts.saw("b", "edge-0")
    hosts.saw("c", "edge-1")
    hosts.saw("phone", "")
    assert hosts.devices_per_host() == {"edge-0": 2, "edge-1": 1}
    assert hosts.gone("edge-0") == {"a", "b"}
    assert hosts.devices_per_host() == {"edge-1": 1}
    assert hosts.gone("edge-9") == set()
    assert hosts.is_gone("a") and hosts.is_gone("b") and not hosts.is_gone("c") and not hosts.is_gone("phone")
    hosts.saw("a", "edge-0")  # a StatefulSet pod comes back under its old name, with this device
    assert hosts.devices_per_host() == {"edge-0": 1, "edge-1": 1}
    assert not hosts.is_gone("a") and hosts.is_gone("b")
    with pytest.raises(ValueError, match="longer than"):
        hosts.saw("x", "h" * (MAX_HOST_NAME + 1))


def test_dropping_a_hosts_devices_ends_the_phase_without_waiting_for_the_deadline():
    async def scenario() -> tuple[float, object, list[str]]:
        n = 8
        # Long phases: without the drop, the missing devices would hold each phase for 30 s.
        run = _round(n, goal=5, timing=RoundTiming(30.0, 30.0, 30.0))
        rng = np.random.default_rng(3)
        honest = [asyncio.create_task(_device(run, i, rng.uniform(-0.1, 0.1, LENGTH))) for i in range(6)]
        started = time.monotonic()
        collecting = asyncio.create_task(run.collect())
        await asyncio.sleep(0.3)  # devices 6 and 7 never showed up: their pod is being deleted
        assert run.drop({"d6", "d7", "not-in-round"}) == 2
        total = await collecting
        run.finish()
        return time.monotonic() - started, total, [await d for d in honest]

    elapsed, total, outcomes = asyncio.run(scenario())
    assert elapsed < 5.0
    assert outcomes == ["done"] * 6 and total.reporters == tuple(range(6))


def test_devices_dropped_after_answering_a_phase_hold_no_later_phase():
    """A pod deleted after its devices advertised their keys: the key-sharing phase must not wait
    for them to its deadline (it waits for whoever answered the previous phase)."""
    async def scenario() -> tuple[float, int, object, list[str]]:
        run = _round(9, goal=5, timing=RoundTiming(30.0, 30.0, 30.0))
        rng = np.random.default_rng(4)
        # d6 and d7 advertise, then their pod is deleted; d8 (same pod) never showed up.
        devices = [asyncio.create_task(_device(run, i, rng.uniform(-0.1, 0.1, LENGTH),
                                               stop_after="advertise" if i >= 6 else None)) for i in range(8)]
        started = time.monotonic()
        collecting = asyncio.create_task(run.collect())
        while len(run.arrived(Stage.ADVERTISE_KEYS)) < 8:
            await asyncio.sleep(0.01)
        awaited = run.drop({"d6", "d7", "d8"})
        total = await collecting
        run.finish()
        return time.monotonic() - started, awaited, total, [await d for d in devices]

    elapsed, awaited, total, outcomes = asyncio.run(scenario())
    assert awaited == 1  # only d8 had yet to advertise
    assert elapsed < 5.0  # not the 30 s key-sharing deadline
    assert outcomes == ["done"] * 6 + ["advertise"] * 2 and total.reporters == tuple(range(6))


def test_a_gone_hosts_held_check_ins_are_answered_and_not_selected():
    async def scenario() -> object:
        pool = CheckInPool(hold_s=10)
        pool._window_open = True
        waiting = asyncio.create_task(pool.check_in("a"))
        await asyncio.sleep(0.05)
        assert pool.waiting == ["a"]
        pool.forget({"a"})
        return await waiting, pool.waiting

    outcome, waiting = asyncio.run(scenario())
    assert isinstance(outcome, ComeBack) and "host is gone" in outcome.reason and waiting == []


def test_a_window_waits_only_for_devices_that_are_around():
    now = [1000.0]
    hosts = HostDirectory(presence_s=60.0, clock=lambda: now[0])
    enrolled = {"a": "user-1", "b": "user-2", "c": "user-3", "d": "user-4"}
    hosts.saw("a", "edge-0")
    hosts.saw("b", "edge-1")
    hosts.gone("edge-1")
    # Just started: everyone enrolled may still check in, except a device whose pod is gone.
    assert hosts.available(enrolled) == {"a": "user-1", "c": "user-3", "d": "user-4"}
    now[0] += 61.0
    hosts.saw("c", "")
    # Later: only devices heard from within the presence window.
    assert hosts.available(enrolled) == {"c": "user-3"}
    now[0] += 30.0
    hosts.saw("d", "edge-2")
    assert hosts.available(enrolled) == {"c": "user-3", "d": "user-4"}


def test_in_a_cluster_the_warm_up_ends_once_every_running_pod_has_checked_in():
    now = [0.0]
    hosts = HostDirectory(presence_s=90.0, clock=lambda: now[0])
    enrolled = {"old-1": "user-1", "old-2": "user-2", "new-1": "user-3", "new-2": "user-4"}
    running = ["fedrec-edge-0", "fedrec-edge-1"]
    hosts.expected_hosts = lambda: running
    now[0] = 5.0
    hosts.saw("new-1", "fedrec-edge-0")
    assert set(hosts.available(enrolled)) == set(enrolled)  # edge-1 not heard from yet: still warming up
    hosts.saw("new-2", "fedrec-edge-1")
    assert set(hosts.available(enrolled)) == {"new-1", "new-2"}  # the old pods' devices are not waited for
