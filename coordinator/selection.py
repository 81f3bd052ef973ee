"""Check-ins and cohort selection: who is waiting, who is picked, when the others come back.

Devices check in when they are eligible (a model of this run installed, examples to train on).
Outside a selection window they are told at once when to come back (pace steering: about when
the next window opens, spread out so they do not all arrive together). During a window their
check-in is held until the window closes; then the selected get their round and the rest a
time to come back.

Policies (how a window closes and whom it picks):
- `UniformSelection`: over-selection. Waits for `ceil(cohort * (1 + over_selection))` devices
  (or the window's timeout) and picks that many at random; the round then needs `cohort`
  reports, so the slowest are not waited for.
- `PoissonSelection`: DP. Waits for every enrolled device (or the timeout) and picks each with
  probability q, independently. The accountant assumes this sampling; a device that is not
  checked in when the window closes is simply not in the round, which can only lower its
  probability of taking part.
- `SeededSelection`: reproducibility. Picks exactly the cohort `fedrec simulate` samples in the
  same round (`tff_pipeline`'s `uniform_cohort` over the enrolled devices ordered by label), and
  waits until all of them have checked in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

# The simulation's sampler itself (numpy only), so a seeded deployment picks its exact cohorts.
from tff_pipeline.federated.sampling import uniform_cohort


@dataclasses.dataclass(frozen=True)
class Selected:
    """A device picked for a round; the check-in returns the round it was picked for."""

    round_key: object


@dataclasses.dataclass(frozen=True)
class ComeBack:
    retry_after_ms: int
    reason: str


class SelectionPolicy(Protocol):
    def is_complete(self, waiting: Sequence[str], labels: Mapping[str, str]) -> bool:
        """The window may close now."""

    def pick(self, waiting: Sequence[str], labels: Mapping[str, str], *, round_number: int,
             rng: np.random.Generator) -> list[str]:
        """The cohort, from the devices waiting when the window closed."""


@dataclasses.dataclass(frozen=True)
class UniformSelection:
    cohort: int
    over_selection: float = 0.3

    @property
    def target(self) -> int:
        return math.ceil(self.cohort * (1 + self.over_selection))

    def is_complete(self, waiting: Sequence[str], labels: Mapping[str, str]) -> bool:
        # Over-selection cannot ask for more devices than the fleet has: a cohort of the whole
        # fleet closes when everyone is there instead of waiting out the window's timeout.
        return len(waiting) >= min(self.target, max(self.cohort, len(labels)))

    def pick(self, waiting, labels, *, round_number, rng):
        chosen = rng.choice(len(waiting), size=min(self.target, len(waiting)), replace=False)
        return [waiting[i] for i in sorted(chosen)]


@dataclasses.dataclass(frozen=True)
class PoissonSelection:
    sampling_rate: float

    def is_complete(self, waiting: Sequence[str], labels: Mapping[str, str]) -> bool:
        return len(waiting) >= len(labels)

    def pick(self, waiting, labels, *, round_number, rng):
        return [device for device in waiting if rng.random() < self.sampling_rate]


@dataclasses.dataclass(frozen=True)
class SeededSelection:
    cohort: int
    seed: int

    def wanted(self, labels: Mapping[str, str], round_number: int) -> list[str]:
        population = sorted(labels, key=lambda device: labels[device])
        positions = uniform_cohort(num_clients=len(population), cohort_size=self.cohort, seed=self.seed,
                                   round_num=round_number)
        return [population[int(p)] for p in positions]

    def is_complete(self, waiting: Sequence[str], labels: Mapping[str, str]) -> bool:
        return False  # decided by the pool, which knows the round number (see CheckInPool)

    def pick(self, waiting, labels, *, round_number, rng):
        present = set(waiting)
        return [device for device in self.wanted(labels, round_number) if device in present]


class CheckInPool:
    """Held check-ins of the current selection window."""

    def __init__(self, *, hold_s: float = 20.0, spread_ms: int = 2000) -> None:
        self.hold_s, self.spread_ms = hold_s, spread_ms
        self._waiting: dict[str, asyncio.Future[Selected | ComeBack]] = {}
        self._window_open = False
        self._arrival = asyncio.Event()
        self.next_window_in_s = 5.0  # pace steering estimate, updated by the scheduler
        self._rng = np.random.default_rng()

    @property
    def waiting(self) -> list[str]:
        return [device for device, future in self._waiting.items() if not future.done()]

    def come_back(self, reason: str) -> ComeBack:
        """When to check in again: around the next window, spread out."""
        spread = int(self._rng.integers(0, self.spread_ms + 1))
        return ComeBack(int(self.next_window_in_s * 1000) + spread, reason)

    def forget(self, device_ids: set[str]) -> None:
        """Drop held check-ins of devices known to be gone (their host was deleted)."""
        for device_id in device_ids:
            future = self._waiting.pop(device_id, None)
            if future is not None and not future.done():
                future.set_result(self.come_back("the device's host is gone"))

    async def check_in(self, device_id: str) -> Selected | ComeBack:
        if not self._window_open:
            return self.come_back("no round is selecting devices now")
        previous = self._waiting.get(device_id)
        if previous is not None and not previous.done():
            previous.set_result(self.come_back("superseded by a newer check-in"))
        future: asyncio.Future[Selected | ComeBack] = asyncio.get_running_loop().create_future()
        self._waiting[device_id] = future
        self._arrival.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.hold_s)
        except TimeoutError:
            if not future.done():
                future.set_result(self.come_back("held too long; the window is still open"))
            return future.result()
        except asyncio.CancelledError:  # the device went away
            if self._waiting.get(device_id) is future:
                del self._waiting[device_id]
            raise

    async def select(self, policy: SelectionPolicy, enrolled: Callable[[], Mapping[str, str]], *, round_number: int,
                     round_key: object, timeout_s: float, rng: np.random.Generator) -> list[str]:
        """Open a window, close it when the policy is satisfied or at `timeout_s`, pick the cohort,
        answer every held check-in, and return the cohort (possibly empty). `enrolled()` gives the
        enrolled devices and their labels (read again as devices enroll during the window)."""
        self._window_open = True
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                labels = enrolled()
                waiting = [d for d in self.waiting if d in labels]
                if isinstance(policy, SeededSelection):
                    complete = set(policy.wanted(labels, round_number)) <= set(waiting)
                else:
                    complete = policy.is_complete(waiting, labels)
                remaining = deadline - time.monotonic()
                if complete or remaining <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), timeout=remaining)
                except TimeoutError:
                    pass
            cohort = policy.pick(waiting, labels, round_number=round_number, rng=rng)
        finally:
            self._window_open = False
        chosen = set(cohort)
        for device, future in list(self._waiting.items()):
            if not future.done():
                future.set_result(Selected(round_key) if device in chosen else self.come_back("not selected this round"))
        self._waiting.clear()
        return cohort
