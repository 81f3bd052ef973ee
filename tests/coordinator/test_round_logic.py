"""The round logic without a network: phases, refusals, abandonment, selection, durable state, config."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from coordinator.config import ConfigError, DeploymentConfig, config_from_dict
from coordinator.errors import Refused
from coordinator.round_run import RoundAbandoned, RoundRun, RoundTiming
from coordinator.selection import CheckInPool, ComeBack, SeededSelection, Selected, UniformSelection
from coordinator.state_store import Checkpoint, StateError, StateStore
from secagg.params import SecAggParams
from secagg.participant import SecAggParticipant
from secagg.quantize import fixed_point_for
from secagg.stages import Stage

LENGTH = 40


def _round(n: int, *, goal: int, timing: RoundTiming = RoundTiming(2.0, 3.0, 0.2)) -> RoundRun:
    fixed_point = fixed_point_for(max_summands=n, value_bound=1.0, fraction_bits=16)
    params = SecAggParams.for_round(round_id=os.urandom(16), num_participants=n, fixed_point=fixed_point,
                                    vector_length=LENGTH, graph_seed=os.urandom(16))
    return RoundRun(round_id=params.round_id, round_number=1, participants=[f"d{i}" for i in range(n)],
                    params=params, goal=goal, timing=timing)


async def _device(run: RoundRun, index: int, vector: np.ndarray, *, stop_after: str | None = None) -> str:
    """An honest device; returns how far it got."""
    device = f"d{index}"
    me = SecAggParticipant(run.params, index)
    try:
        keys = await run.advertise_keys(device, *me.advertise_keys())
        if stop_after == "advertise":
            return "advertise"
        received = await run.share_keys(device, me.share_keys(keys))
        if stop_after == "share":
            return "share"
        encoded = run.params.fixed_point.encode(vector, value_bound=1.0)
        survivors, dropped = await run.submit_masked_input(device, me.masked_input(encoded, received))
        if stop_after == "masked":
            return "masked"
        await run.unmask(device, me.unmask(survivors, dropped))
        return "done"
    except RoundAbandoned:
        return "abandoned"


async def _play(run: RoundRun, vectors, stops):
    devices = [asyncio.create_task(_device(run, i, v, stop_after=s)) for i, (v, s) in enumerate(zip(vectors, stops))]
    try:
        total = await run.collect()
        run.finish()
    except RoundAbandoned as error:
        return None, [await d for d in devices], str(error)
    return total, [await d for d in devices], None


def test_a_round_sums_the_reporters_and_recovers_those_who_left_after_masking():
    rng = np.random.default_rng(0)
    n = 9
    vectors = [rng.uniform(-0.1, 0.1, LENGTH) for _ in range(n)]
    stops = [None] * 6 + ["masked"] * 3  # a third vanish after masking
    run = _round(n, goal=6)
    total, outcomes, error = asyncio.run(_play(run, vectors, stops))
    assert error is None and outcomes == ["done"] * 6 + ["masked"] * 3
    decoded = run.params.fixed_point.decode(total.total)
    np.testing.assert_allclose(decoded, np.sum(vectors, axis=0), atol=n * 2.0 ** -16)
    assert total.reporters == tuple(range(n)) and run.dropouts == 0


def test_devices_that_left_before_reporting_are_left_out_of_the_sum():
    rng = np.random.default_rng(1)
    n = 8
    vectors = [rng.uniform(-0.1, 0.1, LENGTH) for _ in range(n)]
    stops = [None] * 6 + ["share"] * 2
    run = _round(n, goal=5)
    total, _, error = asyncio.run(_play(run, vectors, stops))
    assert error is None and total.reporters == tuple(range(6)) and run.dropouts == 2
    np.testing.assert_allclose(run.params.fixed_point.decode(total.total), np.sum(vectors[:6], axis=0),
                               atol=n * 2.0 ** -16)


def test_a_round_below_its_goal_is_abandoned_and_every_waiting_device_learns_it():
    n = 6
    run = _round(n, goal=5, timing=RoundTiming(1.0, 1.5, 0.1))
    stops = ["advertise"] * 2 + [None] * 2 + ["share"] * 2  # only 2 would report
    total, outcomes, error = asyncio.run(_play(run, [np.zeros(LENGTH)] * n, stops))
    assert total is None and "goal is 5" in error
    assert outcomes[2:4] == ["abandoned", "abandoned"] and run.phase is Stage.ABANDONED


def test_messages_that_do_not_belong_are_refused_without_changing_the_round():
    async def scenario():
        run = _round(4, goal=3)
        me = SecAggParticipant(run.params, 0)
        keys = me.advertise_keys()
        with pytest.raises(Refused) as stranger:
            await run.advertise_keys("intruder", *keys)
        assert stranger.value.reason == "not_in_round"
        with pytest.raises(Refused) as early:
            await run.share_keys("d0", {})
        assert early.value.reason == "wrong_phase"
        with pytest.raises(Refused) as garbage:
            await run.advertise_keys("d0", b"short", b"keys")
        assert garbage.value.reason == "invalid" and run.arrived(Stage.ADVERTISE_KEYS) == frozenset()
        first = asyncio.create_task(run.advertise_keys("d0", *keys))
        await asyncio.sleep(0)
        with pytest.raises(Refused) as twice:
            await run.advertise_keys("d0", *keys)
        assert twice.value.reason == "duplicate"
        run.abandon("test over")
        with pytest.raises(RoundAbandoned):
            await first

    asyncio.run(scenario())


def test_stragglers_cannot_hold_a_round_past_the_grace_after_the_goal():
    async def scenario():
        run = _round(5, goal=3, timing=RoundTiming(5.0, 5.0, 0.2))
        honest = [asyncio.create_task(_device(run, i, np.zeros(LENGTH))) for i in range(4)]
        # participant 4 never says anything
        started = asyncio.get_running_loop().time()
        total = await run.collect()
        run.finish()
        await asyncio.gather(*honest)
        return total, asyncio.get_running_loop().time() - started

    total, seconds = asyncio.run(scenario())
    assert total.reporters == (0, 1, 2, 3) and seconds < 3.0  # not the 5 s deadlines


def test_seeded_selection_picks_the_simulations_cohorts():
    from tff_pipeline.federated import sampling

    labels = {f"d{i}": f"user-{i:07d}" for i in range(30)}
    policy = SeededSelection(cohort=7, seed=4)
    for round_number in range(1, 6):
        expected = sampling.uniform_cohort(num_clients=30, cohort_size=7, seed=4, round_num=round_number)
        assert policy.wanted(labels, round_number) == [f"d{i}" for i in expected]


def test_the_pool_holds_check_ins_during_a_window_and_paces_the_rest():
    async def scenario():
        pool = CheckInPool(hold_s=5.0, spread_ms=0)
        pool.next_window_in_s = 3.0
        early = await pool.check_in("d0")  # no window open: come back later
        assert isinstance(early, ComeBack) and early.retry_after_ms == 3000
        labels = {f"d{i}": f"user-{i}" for i in range(4)}
        selecting = asyncio.create_task(pool.select(UniformSelection(cohort=2, over_selection=0.0), lambda: labels,
                                                    round_number=1, round_key=b"r1", timeout_s=5.0,
                                                    rng=np.random.default_rng(0)))
        await asyncio.sleep(0)
        answers = await asyncio.gather(*(pool.check_in(f"d{i}") for i in range(2)))
        cohort = await selecting
        return answers, cohort

    answers, cohort = asyncio.run(scenario())
    assert sorted(cohort) == ["d0", "d1"] and all(isinstance(a, Selected) and a.round_key == b"r1" for a in answers)


def test_over_selection_never_waits_for_more_devices_than_the_fleet_has():
    """A cohort of the whole fleet (10 of 10, over-selecting 30%) closes when everyone has checked
    in; it used to wait out the window's timeout for 13 devices that do not exist."""
    async def scenario():
        pool = CheckInPool(hold_s=30.0, spread_ms=0)
        labels = {f"d{i}": f"user-{i}" for i in range(10)}
        started = asyncio.get_running_loop().time()
        selecting = asyncio.create_task(pool.select(UniformSelection(cohort=10, over_selection=0.3), lambda: labels,
                                                    round_number=1, round_key=b"r1", timeout_s=30.0,
                                                    rng=np.random.default_rng(0)))
        await asyncio.sleep(0)
        await asyncio.gather(*(pool.check_in(f"d{i}") for i in range(10)))
        return await selecting, asyncio.get_running_loop().time() - started

    cohort, seconds = asyncio.run(scenario())
    assert sorted(cohort) == sorted(f"d{i}" for i in range(10)) and seconds < 5


def test_checkpoints_survive_reopening_and_a_damaged_one_is_refused_by_name(tmp_path):
    store = StateStore(tmp_path)
    arrays = {"params": [np.ones((3, 2), np.float32), np.zeros(3, np.float32), np.float32(3.5)]}
    attempt = store.start_round(round_id=b"x" * 16, round_number=1, selected=4)
    path = store.commit_round(attempt, Checkpoint(1, arrays, {"round": 1}), reporters=4, dropouts=0, bytes_in=10,
                              bytes_out=20)
    running = store.start_round(round_id=b"y" * 16, round_number=2, selected=4)
    store.close()
    reopened = StateStore(tmp_path)  # as after a kill: the running round is interrupted, the checkpoint kept
    assert [r.status for r in reopened.rounds()] == ["completed", "interrupted"] and running == 2
    loaded = reopened.latest_checkpoint()
    assert loaded.params_version == 1 and np.array_equal(loaded.arrays["params"][0], arrays["params"][0])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StateError, match="does not match its recorded sha256"):
        reopened.latest_checkpoint()
    reopened.close()


def test_the_config_file_refuses_unknown_keys_and_bad_values(tmp_path):
    config = config_from_dict({"training": {"rounds": 3}, "rounds": {"over_selection": 0.5}}, base=tmp_path)
    assert config.training.rounds == 3 and config.deployment.over_selection == 0.5
    with pytest.raises(ConfigError, match=r"\[rounds\] over_selectoin"):
        config_from_dict({"rounds": {"over_selectoin": 0.5}}, base=tmp_path)
    with pytest.raises(ConfigError, match="report_window_s"):
        DeploymentConfig(report_window_s=-1)
