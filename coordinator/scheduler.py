"""The round loop: open a selection window, run the round, apply or abandon it, publish models.

    while rounds remain and the budget allows:
        cohort = CheckInPool.select(policy)            (selection.py)
        secure sum = RoundRun(cohort).collect()        (round_run.py: SecAgg+ phases)
        ServerTraining.apply(secure sum)               (training.py: DP, optimizer, checkpoint)
        every export_every rounds: publish a package   (publishing.py)

Runs in the gRPC server's event loop; CPU-heavy steps (unmasking, TF) run in worker threads so
that check-ins, long polls and status calls are answered meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable

import numpy as np

from coordinator.capture import RequestCapture
from coordinator.config import CoordinatorConfig, poisson_goal
from coordinator.hosts import HostDirectory
from coordinator.metrics import CoordinatorMetrics
from coordinator.round_run import RoundAbandoned, RoundRun
from coordinator.selection import (
    CheckInPool,
    PoissonSelection,
    SeededSelection,
    SelectionPolicy,
    UniformSelection,
)
from coordinator.state_store import StateStore
from coordinator.training import BudgetExhausted, RoundSettings, ServerTraining
from protocol import distributed_dp
from secagg.graph import DEFAULT_CORRUPT_FRACTION, privacy_bits_achieved
from secagg.params import SecAggParams
from secagg.quantize import FixedPoint, fixed_point_for
from secagg.stages import Stage

log = logging.getLogger("fedrec.coordinator")


@dataclasses.dataclass
class ActiveRound:
    attempt: int
    run: RoundRun
    settings: RoundSettings
    params_version: int
    weights: tuple[np.ndarray, ...]
    model_version: str
    deadline_unix_ms: int
    rotation_seed: bytes | None = None  # distributed DP: this round's public rotation seed
    bytes_in: int = 0
    bytes_out: int = 0


@dataclasses.dataclass
class SchedulerStatus:
    phase: str = "starting"
    finished: bool = False
    stop_reason: str | None = None
    dropouts_total: int = 0
    last_round_seconds: float | None = None


class Scheduler:
    def __init__(self, *, store: StateStore, training: ServerTraining, config: CoordinatorConfig,
                 metrics: CoordinatorMetrics, rounds_planned: int,
                 publish: Callable[[int, tuple[np.ndarray, ...]], str], latest_model_version: str,
                 capture: RequestCapture | None = None) -> None:
        self.capture = capture
        self.store, self.training, self.config, self.metrics = store, training, config, metrics
        self.rounds_planned = rounds_planned
        self.publish = publish
        self.latest_model_version = latest_model_version
        deployment = config.deployment
        self.pool = CheckInPool(hold_s=deployment.checkin_hold_s)
        # A device checks in at least once per selection window unless it is in a round; twice that
        # without a word, it is not worth holding a Poisson window open for.
        self.hosts = HostDirectory(presence_s=max(60.0, 2 * deployment.selection_timeout_s,
                                                  deployment.report_window_s + deployment.selection_timeout_s))
        self.current: ActiveRound | None = None
        self.status = SchedulerStatus()
        self.rng = np.random.default_rng()
        self._stop = asyncio.Event()
        self._publishing: asyncio.Task[None] | None = None
        self._expected_round_s = 2.0

    # policy

    def policy(self) -> tuple[SelectionPolicy, int]:
        """The selection policy and the goal (reports a round needs)."""
        training, deployment = self.config.training, self.config.deployment
        selection = deployment.selection
        if selection == "auto":
            selection = "poisson" if training.private else "uniform"
        cohort = training.clients_per_round
        if selection == "poisson":
            rate = self.training.privacy.sampling_rate
            goal = poisson_goal(deployment, self.training.privacy.expected_clients)
            return PoissonSelection(rate), goal
        if selection == "seeded":
            return SeededSelection(cohort, training.seed), deployment.min_reporters or cohort
        return UniformSelection(cohort, deployment.over_selection), deployment.min_reporters or cohort

    def _available_devices(self) -> dict[str, str]:
        """Enrolled devices minus those gone or long silent (`HostDirectory.available`): a Poisson
        window waits for every available device, and without this each window after a scale-down
        ran to its timeout waiting for devices that no longer exist."""
        return self.hosts.available(self.store.devices())

    def host_gone(self, host: str) -> int:
        """The cluster deleted `host`: its devices leave the selection window and the current
        round now (not at the phase deadline). Returns how many the round was waiting for."""
        devices = self.hosts.gone(host)
        self.pool.forget(devices)
        active = self.current
        dropped = active.run.drop(devices) if active is not None else 0
        if devices:
            log.info("host %s is gone: %d of its devices left, %d of them awaited by the current round",
                     host, len(devices), dropped, extra={"event": "host_gone", "host": host,
                                                          "devices": len(devices), "awaited": dropped})
        return dropped

    # the loop

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        abandoned_in_a_row = 0
        self.metrics.params_version.set(self.training.params_version)
        self._update_epsilon()
        while not self._stop.is_set():
            if self.training.params_version >= self.rounds_planned:
                self._finish("all planned rounds completed")
                break
            try:
                self.training.check_budget()
            except BudgetExhausted as error:
                self._finish(str(error))
                break
            completed = await self._one_round()
            if completed is None:
                continue  # no cohort this window
            abandoned_in_a_row = 0 if completed else abandoned_in_a_row + 1
            if abandoned_in_a_row >= self.config.deployment.max_consecutive_abandoned:
                self._finish(f"{abandoned_in_a_row} rounds in a row were abandoned; stopping")
                break
        if self._publishing is not None:
            await self._publishing
        if self.status.finished and self._published_version() != self.training.params_version:
            await self._publish(self.training.params_version)

    async def _one_round(self) -> bool | None:
        """Select and run one round: True if it completed, False if abandoned, None if no cohort."""
        policy, goal = self.policy()
        round_number = self.training.params_version + 1
        round_id = os.urandom(16)
        self.status.phase = "selecting"
        self.pool.next_window_in_s = self._expected_round_s  # what the devices not selected are told
        # Seeded cohorts are drawn from the whole enrolled population (as the simulation draws them).
        population = self.store.devices if isinstance(policy, SeededSelection) else self._available_devices
        cohort = await self.pool.select(policy, population, round_number=round_number, round_key=round_id,
                                        timeout_s=self.config.deployment.selection_timeout_s, rng=self.rng)
        if len(cohort) < max(goal, 2):
            self.status.phase = "waiting for devices"
            self.pool.next_window_in_s = 1.0
            if cohort:
                log.info("round %d: only %d devices selected, goal %d; selecting again", round_number,
                         len(cohort), goal)
            await asyncio.sleep(0.5)
            return None
        settings = self.training.settings()
        deployment = self.config.deployment
        spec, rotation_seed = settings.distributed, None
        if spec is None:
            fixed_point = fixed_point_for(max_summands=len(cohort), value_bound=settings.value_bound,
                                          fraction_bits=deployment.fraction_bits)
            vector_length = self.training.layout.length
        else:  # the devices' noised integers, summed modulo 2^b (wraps are the mechanism's modular clip)
            fixed_point, vector_length, rotation_seed = FixedPoint(spec.bits, 0), spec.padded_dim, os.urandom(16)
        params = SecAggParams.for_round(round_id=round_id, num_participants=len(cohort), fixed_point=fixed_point,
                                        vector_length=vector_length, graph_seed=os.urandom(16))
        log.info("round %d: %d devices, SecAgg+ degree %d, threshold %d (%.0f bits against 2%% colluding), "
                 "%d-bit values", round_number, len(cohort), params.degree, params.threshold,
                 privacy_bits_achieved(len(cohort), params.degree, params.threshold, DEFAULT_CORRUPT_FRACTION),
                 params.fixed_point.bit_width,
                 extra={"event": "round_started", "round": round_number, "selected": len(cohort)})
        try:
            attempt = self.store.start_round(round_id=round_id, round_number=round_number, selected=len(cohort))
        except (sqlite3.Error, OSError) as error:  # a full disk: no round until there is space
            log.error("round %d: cannot record its start (%s); selecting again in 5 s", round_number, error)
            self.status.phase = "cannot write the state"
            await asyncio.sleep(5.0)
            return None
        run = RoundRun(round_id=round_id, round_number=round_number, participants=cohort, params=params, goal=goal,
                       timing=deployment.timing)
        self.current = ActiveRound(
            attempt=attempt, run=run, settings=settings, params_version=self.training.params_version,
            weights=self.training.params, model_version=self.latest_model_version,
            deadline_unix_ms=int((time.time() + deployment.report_window_s) * 1000), rotation_seed=rotation_seed)
        if self.capture is not None:
            self.capture.round_started(round_id, list(cohort))
        self.metrics.rounds_started.inc()
        self.metrics.selected.inc(len(cohort))
        self.pool.next_window_in_s = self._expected_round_s
        self.status.phase = f"round {round_number}: secure aggregation"
        started = time.monotonic()
        active = self.current
        try:
            secure_sum = await run.collect()
            self.status.phase = f"round {round_number}: applying"
            if self.capture is not None:
                wire = None if spec is None or rotation_seed is None else \
                    distributed_dp.to_wire(spec, rotation_seed).SerializeToString()
                self.capture.revealed(round_id, round_number, secure_sum.reporters, secure_sum.total,
                                      params.fixed_point, wire)
            decoded = self.training.decode(secure_sum.total, params.fixed_point, rotation_seed)
            version = await asyncio.to_thread(
                self.training.apply, attempt=attempt, summed=decoded, num_reporters=len(secure_sum.reporters),
                dropouts=run.num_selected - len(secure_sum.reporters), bytes_in=active.bytes_in,
                bytes_out=active.bytes_out)
        except RoundAbandoned as error:
            self._record_abandoned(active, str(error))
            return False
        except Exception as error:
            log.exception("round %d failed while applying its result", round_number)
            run.abandon(f"the coordinator could not apply the result: {error}")
            self._record_abandoned(active, f"apply failed: {error}")
            return False
        finally:
            self.current = None if self.current is active else self.current
        run.finish()
        elapsed = time.monotonic() - started
        self.status.last_round_seconds = elapsed
        # Pace steering: tell idle devices to come back about one round from now.
        self._expected_round_s = min(max(0.5, 0.7 * self._expected_round_s + 0.3 * elapsed),
                                     deployment.report_window_s)
        dropouts = run.num_selected - len(secure_sum.reporters)
        self.status.dropouts_total += dropouts
        self.metrics.rounds_completed.inc()
        self.metrics.reported.inc(len(secure_sum.reporters))
        self.metrics.dropped.inc(dropouts)
        self.metrics.round_seconds.observe(elapsed)
        self.metrics.params_version.set(version)
        self._update_epsilon()
        log.info("round %d completed: %d of %d reported in %.1fs (%s)", round_number, len(secure_sum.reporters),
                 run.num_selected, elapsed, ", ".join(f"{k} {v:.2f}s" for k, v in run.phase_seconds.items()),
                 extra={"event": "round_completed", "round": round_number, "selected": run.num_selected,
                        "reporters": len(secure_sum.reporters), "seconds": elapsed,
                        "phase_seconds": run.phase_seconds, "params_version": version})
        self.pool.next_window_in_s = 0.0
        if version % deployment.export_every == 0 and version < self.rounds_planned:
            self._start_publishing(version)
        return True

    def _record_abandoned(self, active: ActiveRound, reason: str) -> None:
        run = active.run
        reporters = len(run.arrived(Stage.MASKED_INPUT))
        dropouts = run.num_selected - reporters
        try:
            self.store.abandon_round(active.attempt, reason=reason, reporters=reporters, dropouts=dropouts,
                                     bytes_in=active.bytes_in, bytes_out=active.bytes_out)
        except (sqlite3.Error, OSError) as error:  # a full disk: the next start marks it interrupted instead
            log.error("round %d: cannot record that it was abandoned (%s)", run.round_number, error)
        self.status.dropouts_total += dropouts
        self.metrics.rounds_abandoned.inc()
        self.metrics.dropped.inc(dropouts)
        self.pool.next_window_in_s = 1.0
        log.warning("round %d abandoned: %s", run.round_number, reason,
                    extra={"event": "round_abandoned", "round": run.round_number, "selected": run.num_selected,
                           "reporters": reporters, "reason": reason})

    def _finish(self, reason: str) -> None:
        self.status.finished = True
        self.status.stop_reason = reason
        self.status.phase = "finished"
        self.pool.next_window_in_s = 3600.0
        log.info("training finished: %s", reason)

    def _update_epsilon(self) -> None:
        epsilon = self.training.epsilon()
        if epsilon is not None:
            self.metrics.epsilon.set(epsilon)

    # packages

    def _published_version(self) -> int | None:
        packages = self.store.packages()
        return packages[-1][1] if packages else None

    def _start_publishing(self, version: int) -> None:
        if self._publishing is not None and not self._publishing.done():
            return  # the previous export is still running; the next one will catch up
        self._publishing = asyncio.create_task(self._publish(version))

    async def _publish(self, version: int) -> None:
        params = self.training.params  # this version's: the export runs while the next round trains
        try:
            self.latest_model_version = await asyncio.to_thread(self.publish, version, params)
            log.info("published model %s (params version %d)", self.latest_model_version, version)
        except Exception:
            log.exception("publishing params version %d failed; devices keep %s", version, self.latest_model_version)
