"""A simulated edge pod: its shard from its ordinal, its users' ratings made in the pod."""

from __future__ import annotations

import asyncio
import csv
import time

import pytest

from edge_client.fleet import LABEL_FILE, PENDING_RATINGS
from edge_client.pod import PodError, ordinal_of, prepare_pod, shard_users, until_changed, wait_for_credentials


def test_the_ordinal_is_the_number_after_the_last_dash():
    assert ordinal_of("fedrec-edge-0") == 0
    assert ordinal_of("fedrec-edge-31") == 31
    for bad in ("fedrec-edge", "fedrec-edge-", "edge-x", "-3", "Fedrec-Edge-1"):
        with pytest.raises(PodError, match="StatefulSet pod name"):
            ordinal_of(bad)


def test_shards_are_disjoint_consecutive_and_wrap_around():
    users = list(range(100, 130))  # 30 users
    shards = [shard_users(users, ordinal=k, devices_per_pod=7) for k in range(4)]
    assert shards[0] == list(range(100, 107)) and shards[1] == list(range(107, 114))
    assert len({u for s in shards for u in s}) == 28  # disjoint while they fit
    assert shard_users(users, ordinal=4, devices_per_pod=7) == [128, 129, 100, 101, 102, 103, 104]
    with pytest.raises(PodError, match="exceeds"):
        shard_users(users, ordinal=0, devices_per_pod=31)
    with pytest.raises(PodError, match="at least 1"):
        shard_users(users, ordinal=0, devices_per_pod=0)


def test_a_pod_writes_only_its_own_users_ratings_and_keeps_them_across_restarts(tmp_path):
    first = prepare_pod(tmp_path / "pod1", pod_name="fedrec-edge-1", devices_per_pod=5, seed=0)
    other = prepare_pod(tmp_path / "pod2", pod_name="fedrec-edge-2", devices_per_pod=5, seed=0)
    labels = [(f / LABEL_FILE).read_text().strip() for f in first]
    assert len(first) == 5 and len(set(labels)) == 5
    assert not set(labels) & {(f / LABEL_FILE).read_text().strip() for f in other}
    rows = list(csv.reader((first[0] / PENDING_RATINGS).open()))
    assert rows[0] == ["item_id", "rating"] and len(rows) > 1
    marker = first[0] / PENDING_RATINGS
    marker.write_text("item_id,rating\n")  # the device already imported it; a restart must not rewrite it
    again = prepare_pod(tmp_path / "pod1", pod_name="fedrec-edge-1", devices_per_pod=5, seed=0)
    assert again == first and marker.read_text() == "item_id,rating\n"


def test_the_pod_waits_for_the_credentials_the_coordinator_publishes(tmp_path):
    async def scenario():
        stop = asyncio.Event()
        waiting = asyncio.create_task(wait_for_credentials(tmp_path, stop))
        await asyncio.sleep(1.5)
        assert not waiting.done()
        (tmp_path / "ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
        (tmp_path / "enroll-token").write_text("token\n")
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) == (b"-----BEGIN CERTIFICATE-----\n", "token")

    async def stopped():
        stop = asyncio.Event()
        stop.set()
        return await wait_for_credentials(tmp_path / "absent", stop)

    assert asyncio.run(stopped()) is None


def test_the_pod_notices_new_credentials_but_not_a_half_written_secret(tmp_path):
    """A coordinator that started over publishes a new CA and token: the pod sees the change at
    its next poll; a file missing or empty mid-update is not a change (it is read again)."""
    (tmp_path / "ca.crt").write_bytes(b"old CA")
    (tmp_path / "enroll-token").write_text("old token\n")
    current = (b"old CA", "old token")

    async def scenario() -> tuple[bool, float, bool]:
        stop = asyncio.Event()
        watching = asyncio.create_task(until_changed(tmp_path, current, stop, poll_s=0.05))
        await asyncio.sleep(0.3)
        (tmp_path / "enroll-token").write_text("")  # the kubelet is swapping the files
        (tmp_path / "ca.crt").write_bytes(b"new CA")
        await asyncio.sleep(0.3)
        pending = not watching.done()
        changed_at = time.monotonic()
        (tmp_path / "enroll-token").write_text("new token")
        changed = await asyncio.wait_for(watching, 5)
        return pending, time.monotonic() - changed_at, changed

    pending, seconds, changed = asyncio.run(scenario())
    assert pending and changed and seconds < 1.0

    async def stopped() -> bool:
        stop = asyncio.Event()
        watching = asyncio.create_task(until_changed(tmp_path, (b"new CA", "new token"), stop, poll_s=10))
        await asyncio.sleep(0.05)
        stop.set()
        return await asyncio.wait_for(watching, 2)

    assert asyncio.run(stopped()) is False
