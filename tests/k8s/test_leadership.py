"""Lease leader election against the real API server: one leader at a time, fast hand-over."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes import client

from coordinator.cluster.api import ClusterSettings
from coordinator.cluster.leadership import Leadership
from tests.k8s.control_plane import ControlPlane, available

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(available() is not None, reason=str(available()))]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("leadership")).start()
    try:
        api = plane.api_client()
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="lead")))
        yield api
    finally:
        plane.stop()


def _candidate(api, name: str, lost: list[str]) -> Leadership:
    settings = ClusterSettings(namespace="lead", identity=name, lease_duration_s=6, renew_deadline_s=4,
                               retry_period_s=1)
    leadership = Leadership(settings, api, on_lost=lambda: lost.append(name))
    leadership.start()
    return leadership


def _wait_for_leader(candidates: list[Leadership], timeout_s: float) -> Leadership:
    async def wait() -> Leadership:
        stop = asyncio.Event()
        tasks = {asyncio.create_task(c.wait_until_leader(stop)): c for c in candidates}
        done, pending = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*pending)
        assert done, "nobody became leader"
        return tasks[next(iter(done))]
    return asyncio.run(wait())


def test_only_one_candidate_leads_and_a_release_hands_over_at_once(api):
    lost: list[str] = []
    client.CoordinationV1Api(api).create_namespaced_lease("lead", client.V1Lease(
        metadata=client.V1ObjectMeta(name="fedrec-coordinator"), spec=client.V1LeaseSpec()))
    a, b = _candidate(api, "a", lost), _candidate(api, "b", lost)
    first = _wait_for_leader([a, b], timeout_s=20)
    second = b if first is a else a
    for _ in range(8):  # several renewal periods: still exactly one leader, the same one
        time.sleep(1)
        assert first.is_leader and not second.is_leader
    lease = client.CoordinationV1Api(api).read_namespaced_lease("fedrec-coordinator", "lead")
    assert lease.spec.holder_identity == first.settings.identity
    released = time.monotonic()
    first.release()
    _wait_for_leader([second], timeout_s=10)
    handover_s = time.monotonic() - released
    print(f"hand-over after release: {handover_s:.1f} s (lease duration 6 s)")
    assert handover_s < 4  # well before the 6 s lease would have expired
    assert lost == []


def test_a_leader_that_cannot_reach_the_api_server_steps_down(tmp_path):
    plane = ControlPlane(tmp_path).start()
    lost: list[str] = []
    try:
        api = plane.api_client()
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="lead")))
        leader = _candidate(api, "solo", lost)
        _wait_for_leader([leader], timeout_s=20)
    finally:
        plane.stop()  # the API server is gone: renewals fail
    deadline = time.monotonic() + 15
    while not lost and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lost == ["solo"] and not leader.is_leader
