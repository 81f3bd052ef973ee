"""One round's phases, without a network: who must answer, when a phase closes, what each device gets.

    selected --AdvertiseKeys--> advertised --ShareKeys--> shared --SubmitMaskedInput--> reported
                                                                                            |
                        sum of the reporters' updates <--secure aggregation-- Unmask <------+

Every device call of a phase waits (a long poll) until the phase closes: when everyone the phase
waits for has answered, or at its deadline; the reporting phase also closes a short grace after
the goal count is reached, so a few stragglers cannot hold a round (the key phases too). A phase that ends with fewer
devices than the goal abandons the round: every waiting call learns it, the model stays as it
was. The gRPC servicer (`service.py`) only translates messages into these calls.

The stages, what each waits for, its deadline and whether it closes early at the goal are one
table, `secagg.phases.ROUND_PHASES`; `collect` walks it.

A message that does not belong (an unknown device, a second message for the same phase, a phase
that is not the current one, a malformed value) raises `Refused` with a reason label for the
metrics and leaves the round unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from coordinator.errors import CoordinatorError, Refused
from secagg.errors import SecAggError
from secagg.params import SecAggParams
from secagg.phases import ROUND_PHASES, Deadline, RoundPhase, Waits
from secagg.server import SecAggServer
from secagg.stages import Stage


class RoundAbandoned(CoordinatorError, RuntimeError):
    """The round ended without a result; the caller's message was not used."""


@dataclasses.dataclass(frozen=True)
class RoundTiming:
    phase_timeout_s: float = 30.0  # key phases and unmasking
    report_window_s: float = 60.0  # from the task to the end of the masked-input phase
    straggler_grace_s: float = 2.0  # once the goal is reached, how long the reporting phase waits for the rest


@dataclasses.dataclass(frozen=True)
class SecureSum:
    """What secure aggregation reveals: the sum of the reporters' encoded vectors, and who they are."""

    total: np.ndarray  # uint64, mod 2^bit_width
    reporters: tuple[int, ...]


class RoundRun:
    """The phases of one round over `participants` (device ids, index = position)."""

    def __init__(self, *, round_id: bytes, round_number: int, participants: Sequence[str], params: SecAggParams,
                 goal: int, timing: RoundTiming) -> None:
        if len(set(participants)) != len(participants):
            raise ValueError("a device appears twice in the cohort")
        if params.num_participants != len(participants):
            raise ValueError("the SecAgg parameters do not match the cohort size")
        self.round_id, self.round_number, self.goal, self.timing = round_id, round_number, goal, timing
        self.participants = tuple(participants)
        self.params = params
        self.index = {device: position for position, device in enumerate(participants)}
        self.server = SecAggServer(params)
        self.started = time.monotonic()
        self.report_deadline = self.started + timing.report_window_s
        self.abandon_reason: str | None = None
        self._arrived: dict[Stage, set[int]] = {stage: set() for stage in Stage}
        self._expected: dict[Stage, set[int]] = {}
        self._gone: set[int] = set()  # their host was deleted: no phase waits for them
        self._closed: dict[Stage, asyncio.Event] = {stage: asyncio.Event() for stage in Stage}
        self._progress = asyncio.Event()  # set whenever a message arrives
        self.phase_seconds: dict[str, float] = {}  # how long each phase took (benchmarks, logs)
        self._result: SecureSum | None = None
        # The first stage is open from the start (its phase timeout runs from `started`).
        self.phase, self._opened = ROUND_PHASES[0].stage, self.started  # the current stage, when it opened
        self._open(ROUND_PHASES[0].stage, self._waited_for(ROUND_PHASES[0]), at=self.started)

    # what the driver sees

    @property
    def num_selected(self) -> int:
        return len(self.participants)

    def arrived(self, phase: Stage) -> frozenset[int]:
        return frozenset(self._arrived[phase])

    @property
    def dropouts(self) -> int:
        """Selected devices that did not report (by the end of the reporting phase)."""
        if self.phase in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT) and self.abandon_reason is None:
            return 0
        return self.num_selected - len(self._arrived[Stage.MASKED_INPUT])

    # device calls (each waits until its phase closes)

    async def advertise_keys(self, device_id: str, channel_key: bytes, mask_key: bytes) -> dict[int, tuple[bytes, bytes]]:
        index = self._accept(device_id, Stage.ADVERTISE_KEYS)
        self._apply(Stage.ADVERTISE_KEYS, index, lambda: self.server.receive_keys(index, channel_key, mask_key))
        await self._wait(Stage.ADVERTISE_KEYS)
        return self.server.keys_for(index)

    async def share_keys(self, device_id: str, ciphertexts: Mapping[int, bytes]) -> Mapping[int, bytes]:
        index = self._accept(device_id, Stage.SHARE_KEYS)
        self._apply(Stage.SHARE_KEYS, index, lambda: self.server.receive_shares(index, ciphertexts))  # it copies
        await self._wait(Stage.SHARE_KEYS)
        return self.server.shares_for(index)

    async def submit_masked_input(self, device_id: str, masked: bytes | np.ndarray) -> tuple[list[int], list[int]]:
        """Returns (survivors, dropped) among the device's neighbourhood: whose shares to reveal."""
        index = self._accept(device_id, Stage.MASKED_INPUT)
        self._apply(Stage.MASKED_INPUT, index, lambda: self.server.receive_masked(index, masked))
        await self._wait(Stage.MASKED_INPUT)
        survivors, dropped = self.server.unmask_request_for(index)  # its neighbourhood's part, sorted
        return list(survivors), list(dropped)

    async def unmask(self, device_id: str, shares: Mapping[int, bytes]) -> None:
        index = self._accept(device_id, Stage.UNMASK)
        self._apply(Stage.UNMASK, index, lambda: self.server.receive_unmask(index, shares))  # it copies
        await self._wait(Stage.DONE)

    # the driver

    async def collect(self) -> SecureSum:
        """Walk `ROUND_PHASES` to the secure sum, or raise RoundAbandoned (every waiting call learns it).

        Each stage but the first opens (for the devices it waits for) and only then wakes the calls
        waiting in the previous one, so what they return is ready and late messages for the previous
        stage are refused."""
        mark = time.monotonic()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            self.phase_seconds[name] = now - mark
            mark = now

        try:
            previous: RoundPhase | None = None
            for entry in ROUND_PHASES:
                if previous is not None:  # the first stage opened with the round
                    self._open(entry.stage, self._waited_for(entry, previous))
                    self._release(previous.stage)
                grace = self.timing.straggler_grace_s if entry.closes_at_goal else None
                await self._close(entry.stage, deadline=self._deadline(entry), grace=grace)
                lap(entry.stage.value)
                if entry.abandon_below_goal is not None:
                    self._require(entry.stage, entry.abandon_below_goal)
                previous = entry
            assert previous is not None
            self.phase = Stage.AGGREGATING
            self._release(previous.stage)
            try:
                total, reporters = await asyncio.to_thread(self.server.result)
            except SecAggError as error:
                raise RoundAbandoned(f"secure aggregation could not unmask the sum: {error}") from None
            lap("unmasking")
            self._result = SecureSum(total, tuple(sorted(reporters)))
            return self._result
        except RoundAbandoned as error:
            self.abandon(str(error))
            raise

    def finish(self) -> None:
        """The round's result was used: release the devices waiting in Unmask."""
        self.phase = Stage.DONE
        self._closed[Stage.DONE].set()

    def abandon(self, reason: str) -> None:
        if self.phase in (Stage.DONE, Stage.ABANDONED):
            return
        self.abandon_reason = reason
        self.phase = Stage.ABANDONED
        for event in self._closed.values():
            event.set()

    def drop(self, device_ids: Collection[str]) -> int:
        """These devices are known to be gone (their host was deleted): neither the current phase
        nor any later one waits for them (a device that already answered this phase would otherwise
        hold the next one to its deadline). Returns how many the current phase was still waiting
        for. Their messages already in are kept (secure aggregation recovers a device that masked
        and then vanished)."""
        indices = {self.index[d] for d in device_ids if d in self.index}
        self._gone |= indices
        expected = self._expected.get(self.phase)
        if not indices or expected is None:
            return 0
        waited_for = (indices & expected) - self._arrived[self.phase]
        expected -= waited_for
        self._progress.set()
        return len(waited_for)

    # internals

    def _accept(self, device_id: str, phase: Stage) -> int:
        index = self.index.get(device_id)
        if index is None:
            raise Refused("not_in_round", f"device {device_id} is not in round {self.round_number}")
        if self.phase is Stage.ABANDONED:
            raise Refused("round_abandoned", f"round {self.round_number} was abandoned: {self.abandon_reason}")
        if self.phase is not phase:
            raise Refused("wrong_phase", f"round {self.round_number} is in phase {self.phase.value}, not {phase.value}")
        if index not in self._expected.get(phase, set()):
            raise Refused("wrong_phase", f"device {device_id} is not expected in phase {phase.value}")
        if index in self._arrived[phase]:
            raise Refused("duplicate", f"device {device_id} already sent its {phase.value} message")
        return index

    def _apply(self, phase: Stage, index: int, action) -> None:
        try:
            action()
        except SecAggError as error:  # the message's content: the phase and the sender were checked (`_accept`)
            raise Refused("invalid", str(error), "INVALID_ARGUMENT") from None
        self._arrived[phase].add(index)
        self._progress.set()

    async def _wait(self, phase: Stage) -> None:
        await self._closed[phase].wait()
        if self.phase is Stage.ABANDONED:
            raise RoundAbandoned(self.abandon_reason or "abandoned")

    def _waited_for(self, entry: RoundPhase, previous: RoundPhase | None = None) -> set[int]:
        """The devices `entry` waits for. For the survivors, this makes the server's unmask request
        (which closes masked-input collection for good)."""
        if entry.waits_for is Waits.SELECTED:
            return set(range(len(self.participants)))
        if entry.waits_for is Waits.PREVIOUS:
            assert previous is not None
            return set(self._arrived[previous.stage])
        survivors, _ = self.server.unmask_request()
        return set(survivors)

    def _deadline(self, entry: RoundPhase) -> float:
        if entry.deadline is Deadline.REPORT_WINDOW:
            return self.report_deadline
        return self._opened + self.timing.phase_timeout_s

    def _open(self, phase: Stage, expected: Collection[int], *, at: float | None = None) -> None:
        self._expected[phase] = set(expected) - self._gone
        self.phase = phase
        self._opened = time.monotonic() if at is None else at

    async def _close(self, phase: Stage, *, deadline: float, grace: float | None = None) -> None:
        """Wait until everyone expected arrived, the deadline passed, or (with `grace`) the goal
        was reached `grace` seconds ago. Late messages are refused from here on (the driver moves
        the phase on before it yields again); the waiting calls wake at `_release`."""
        goal_reached_at: float | None = None
        while True:
            if self.phase is Stage.ABANDONED:
                raise RoundAbandoned(self.abandon_reason or "abandoned")
            arrived, expected = self._arrived[phase], self._expected[phase]
            if expected <= arrived:
                break
            now = time.monotonic()
            if grace is not None and len(arrived) >= self.goal:
                goal_reached_at = goal_reached_at or now
                if now >= goal_reached_at + grace:
                    break
            until = deadline if goal_reached_at is None else min(deadline, goal_reached_at + (grace or 0.0))
            if now >= until:
                break
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), timeout=until - now)
            except TimeoutError:
                pass

    def _release(self, phase: Stage) -> None:
        """Wake the calls waiting in `phase`: what they return is ready."""
        self._closed[phase].set()

    def _require(self, phase: Stage, what: str) -> None:
        count = len(self._arrived[phase])
        if count < self.goal:
            raise RoundAbandoned(f"only {count} of {self.num_selected} selected devices {what}; the goal is {self.goal}")
