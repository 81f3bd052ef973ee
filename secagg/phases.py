"""The round's stages as one ordered table: what each waits for, when it closes, when it abandons.

A round driver (`coordinator.round_run.RoundRun.collect`) walks `ROUND_PHASES` in order. For each
entry it opens the stage for the devices named by `waits_for` (the first stage is open from the
start of the round, for every selected device), wakes the calls waiting in the previous stage, and
closes the stage when everyone it waits for has answered, at its deadline, or, if
`closes_at_goal`, a straggler grace after the goal count was reached. A stage with
`abandon_below_goal` then abandons the round if fewer devices than the goal answered, giving
"only {count} of {selected} selected devices {abandon_below_goal}; the goal is {goal}" as the
reason. After the last entry the server rebuilds the sum (`Stage.AGGREGATING`).

Data only: the durations come from the driver's timing settings, the waiting from the driver.
"""

from __future__ import annotations

import dataclasses
import enum

from secagg.stages import Stage


class Waits(enum.Enum):
    """Which devices a stage waits for."""

    SELECTED = "selected"  # every device of the cohort
    PREVIOUS = "previous"  # those that answered the previous stage
    SURVIVORS = "survivors"  # those that sent a masked input, as the server's unmask request lists them


class Deadline(enum.Enum):
    """When a stage closes at the latest."""

    PHASE_TIMEOUT = "phase_timeout"  # the phase timeout after the stage opened (the first: the round started)
    REPORT_WINDOW = "report_window"  # the end of the round's report window (report window after the round started)


@dataclasses.dataclass(frozen=True)
class RoundPhase:
    stage: Stage
    waits_for: Waits
    deadline: Deadline
    closes_at_goal: bool  # the straggler grace: close that long after the goal count was reached
    abandon_below_goal: str | None  # what the abandon reason says the devices did; None: no goal check


ROUND_PHASES: tuple[RoundPhase, ...] = (
    RoundPhase(Stage.ADVERTISE_KEYS, Waits.SELECTED, Deadline.PHASE_TIMEOUT, closes_at_goal=True,
               abandon_below_goal="advertised keys"),
    RoundPhase(Stage.SHARE_KEYS, Waits.PREVIOUS, Deadline.PHASE_TIMEOUT, closes_at_goal=True,
               abandon_below_goal="shared keys"),
    RoundPhase(Stage.MASKED_INPUT, Waits.PREVIOUS, Deadline.REPORT_WINDOW, closes_at_goal=True,
               abandon_below_goal="reported"),
    # Waits for every survivor until the timeout; whether enough shares came is decided when the
    # server rebuilds the sum (`SecAggServer.result`), so no goal check and no early close here.
    RoundPhase(Stage.UNMASK, Waits.SURVIVORS, Deadline.PHASE_TIMEOUT, closes_at_goal=False,
               abandon_below_goal=None),
)
