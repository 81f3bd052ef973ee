"""A coordinator's status, built in one place: for the Status call, the cluster's status
ConfigMap and `fedrec up`'s progress line, and (read offline) for `fedrec status` when no
coordinator runs. Each caller renders it; none counts rounds, dropouts or ε on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class CoordinatorStatus:
    rounds_completed: int
    rounds_planned: int | None
    rounds_abandoned: int  # abandoned or interrupted attempts
    round_counts: Mapping[str, int]  # attempts by status (completed, abandoned, interrupted, running)
    devices_enrolled: int
    epsilon: float | None  # None: not a DP run
    delta: float | None
    model_version: str | None
    params_version: int
    phase: str = "stopped"
    finished: bool = False
    stop_reason: str | None = None
    round_in_progress: int = 0  # 0: none
    cohort: int = 0
    devices_checked_in: int = 0
    dropouts: int = 0
    refused: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def stopped_lines(self) -> list[str]:
        """What `fedrec status` prints for a state folder no coordinator holds."""
        planned = "?" if self.rounds_planned is None else str(self.rounds_planned)
        spent = "no DP" if self.epsilon is None else f"ε {self.epsilon:.3f} spent at δ {self.delta:g}"
        return [f"rounds {self.rounds_completed}/{planned} completed, {self.rounds_abandoned} abandoned  "
                f"devices {self.devices_enrolled}  {spent}",
                f"model {self.model_version or 'none published'}"]


def live_status(scheduler: Any, store: Any, *, devices_enrolled: int | None = None,
                refused: Mapping[str, int] | None = None) -> CoordinatorStatus:
    """The running coordinator's status, from its scheduler (with its training) and its store;
    `devices_enrolled` when the caller keeps the count (the service does), else the store's."""
    training = scheduler.training
    counts = store.round_counts()
    active = scheduler.current
    return CoordinatorStatus(
        rounds_completed=training.params_version, rounds_planned=scheduler.rounds_planned,
        rounds_abandoned=counts["abandoned"] + counts["interrupted"], round_counts=counts,
        devices_enrolled=store.num_devices() if devices_enrolled is None else devices_enrolled,
        epsilon=training.epsilon(), delta=training.config.training.delta if training.private else None,
        model_version=scheduler.latest_model_version, params_version=training.params_version,
        phase=scheduler.status.phase if active is None else active.run.phase.value,
        finished=scheduler.status.finished, stop_reason=scheduler.status.stop_reason,
        round_in_progress=0 if active is None else active.run.round_number,
        cohort=0 if active is None else active.run.num_selected,
        devices_checked_in=len(scheduler.pool.waiting), dropouts=scheduler.status.dropouts_total,
        refused=dict(refused or {}))


def progress_line(status: Any) -> str:
    """One line of a live coordinator's progress, from a `CoordinatorStatus` or the Status reply."""
    epsilon = f"  ε {status.epsilon:.3f}" if status.delta else ""
    current = f"  round {status.round_in_progress} ({status.phase}, cohort {status.cohort})" \
        if status.round_in_progress else f"  {status.phase}"
    return (f"rounds {status.rounds_completed}/{status.rounds_planned} completed, {status.rounds_abandoned} "
            f"abandoned{current}  devices {status.devices_enrolled}  dropouts {status.dropouts}{epsilon}")
