"""Plan a DP training run for a privacy budget: cohort size (q), rounds (T), noise multiplier (z).

Given (epsilon, delta) and the population, utility under user-level DP depends on how the budget
is spent, not only on its size:

- **Cohort.** The noise on the averaged update is z * clip / cohort, and at a fixed epsilon z
  grows more slowly than the cohort (privacy amplification by sampling), so larger cohorts are
  better until rounds get expensive. On ML-100K u1 at epsilon 8 (300 rounds) cohorts of 100, 200
  and 300 gave RMSE 0.973-0.978, 0.970-0.972 and 0.968-0.969. The plan takes a third of the
  population, at most `MAX_PLANNED_COHORT` (the cost of a round grows with it).
- **Rounds.** A fixed budget over more rounds means more noise per round. Sweeps on u1 found
  50 rounds best at epsilon 1 (RMSE 1.03 vs 1.44 with 300), 150 at epsilon 4 (0.99 vs 1.00) and
  300 at epsilon 8 (0.974 vs 0.980 with 150). `planned_rounds` is the power law through the
  epsilon 1 and 8 points, 300 * (epsilon / 8) ** (log 6 / log 8), which gives 170 at epsilon 4,
  capped at 300. It is a rule fitted to measurements, not an optimum derived from first
  principles.
- **Noise.** z is then calibrated with the RDP accountant so that epsilon after T rounds is at
  most the budget (`accounting.calibrate_noise_multiplier`).

Flags the user gives are kept; only the unset ones are planned. The plan is made once, by
`plan_run` (every entry point) or `plan_config` (benchmarks), and recorded in the config: the
cohort and rounds in their fields, z in `planned_noise_multiplier`. `plan_privacy`, which every
run asks for its (z, q, T) (the simulation, the coordinator's config check and its stored
setting), reads it there instead of calibrating again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from protocol.distributed_dp import DistributedDpSpec
from tff_pipeline.privacy import accounting
from tff_pipeline.privacy import distributed as ddp_accounting
from tff_pipeline.privacy.errors import PrivacyError

if TYPE_CHECKING:
    from tff_pipeline.config import SimulationConfig

MAX_PLANNED_COHORT = 1000
COHORT_FRACTION = 1 / 3
# Distributed DP's cohort is chosen among these fractions of the users: the one whose calibrated z
# puts the least noise on the averaged update. Its sampled-Skellam bound is loose at large q (the
# factor 3 of Zhu and Wang's general bound, paid every round), so a third of the users is far from
# best there: on the synthetic default at ε = 8, z = 10.25 at 1/3 but 2.04 at 1/7, half the noise.
DISTRIBUTED_COHORT_FRACTIONS = (1 / 3, 1 / 4, 1 / 5, 1 / 7, 1 / 10, 1 / 15, 1 / 20)
MIN_DISTRIBUTED_COHORT = 20
FULL_BUDGET_EPSILON = 8.0
FULL_BUDGET_ROUNDS = 300
MIN_PLANNED_ROUNDS = 20
ROUNDS_EXPONENT = math.log(6) / math.log(8)  # 50 rounds at epsilon 1, 300 at 8


@dataclasses.dataclass(frozen=True)
class DistributedShape:
    """What distributed DP's accounting needs beyond (q, T): the length of the noised vector, the
    bit width, the clip, and m of the noise rule."""

    dim: int
    bits: int
    clip: float
    # m for an expected cohort: a deployment's round goal; None: `simulation_noise_reporters`.
    noise_reporters: Callable[[float], int] | None = None

    def reporters(self, clients_per_round: float, sampling_rate: float) -> int:
        if self.noise_reporters is not None:
            return self.noise_reporters(clients_per_round)
        return ddp_accounting.simulation_noise_reporters(clients_per_round, sampling_rate)

    def spec(self, noise_multiplier: float, clients_per_round: float, sampling_rate: float) -> DistributedDpSpec:
        return ddp_accounting.spec_for(bits=self.bits, clip=self.clip, noise_multiplier=noise_multiplier,
                                       expected_clients=clients_per_round,
                                       noise_reporters=self.reporters(clients_per_round, sampling_rate), dim=self.dim)

    def calibrate(self, target_epsilon: float, sampling_rate: float, rounds: int, delta: float,
                  clients_per_round: float) -> float:
        return ddp_accounting.calibrate_noise_multiplier(
            target_epsilon=target_epsilon, sampling_rate=sampling_rate, rounds=rounds, delta=delta, bits=self.bits,
            clip=self.clip, expected_clients=clients_per_round,
            noise_reporters=self.reporters(clients_per_round, sampling_rate), dim=self.dim)

    def noise_on_mean(self, noise_multiplier: float, clients_per_round: float, sampling_rate: float) -> float:
        """The noise's standard deviation on the averaged update, in clips: r shares of (zC)^2 / m
        over the expected cohort r."""
        reporters = self.reporters(clients_per_round, sampling_rate)
        return noise_multiplier * math.sqrt(clients_per_round / reporters) / clients_per_round

    def best_cohort(self, target_epsilon: float, delta: float, population: int, rounds: int) -> int:
        """Among `DISTRIBUTED_COHORT_FRACTIONS` of the population, the cohort with the least noise
        on the averaged update once z is calibrated for it."""
        candidates = sorted({max(1, min(population, MAX_PLANNED_COHORT, max(MIN_DISTRIBUTED_COHORT, round(population * f))))
                             for f in DISTRIBUTED_COHORT_FRACTIONS})
        scored = []
        for cohort in candidates:
            q = min(1.0, cohort / population)
            try:
                z = self.calibrate(target_epsilon, q, rounds, delta, cohort)
            except PrivacyError:
                continue
            scored.append((self.noise_on_mean(z, cohort, q), cohort))
        if not scored:
            return planned_cohort(population)  # the caller's calibration then names what does not fit
        return min(scored)[1]


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    clients_per_round: int
    rounds: int
    noise_multiplier: float
    sampling_rate: float
    epsilon_rdp: float
    epsilon_pld: float
    delta: float
    population: int
    planned: tuple[str, ...]  # which of clients_per_round / rounds the planner chose
    distributed: DistributedDpSpec | None = None  # distributed DP: the planned round's spec

    def describe(self) -> str:
        population = self.population
        chosen = {"clients_per_round": "cohort", "rounds": "rounds"}
        by = ", ".join(chosen[name] for name in self.planned) or "nothing (all given)"
        if self.distributed is not None:
            return (
                f"privacy plan for {population} users: expected cohort {self.clients_per_round} "
                f"(q = {self.sampling_rate:.3g}), {self.rounds} rounds, noise multiplier z = {self.noise_multiplier:.3f} "
                f"-> epsilon {self.epsilon_rdp:.3g} (RDP, Skellam) at delta {self.delta:g}; "
                f"{self.distributed.describe()}; planned: {by}"
            )
        return (
            f"privacy plan for {population} users: expected cohort {self.clients_per_round} "
            f"(q = {self.sampling_rate:.3g}), {self.rounds} rounds, noise multiplier z = {self.noise_multiplier:.3f} "
            f"-> epsilon {self.epsilon_rdp:.3g} (RDP) / {self.epsilon_pld:.3g} (PLD) at delta {self.delta:g}; "
            f"planned: {by}"
        )


def planned_cohort(population: int) -> int:
    return max(1, min(population, MAX_PLANNED_COHORT, round(population * COHORT_FRACTION)))


def planned_rounds(target_epsilon: float) -> int:
    share = min(1.0, target_epsilon / FULL_BUDGET_EPSILON) ** ROUNDS_EXPONENT
    rounds = int(round(FULL_BUDGET_ROUNDS * share / 10.0) * 10)
    return max(MIN_PLANNED_ROUNDS, min(FULL_BUDGET_ROUNDS, rounds))


def plan_budget(
    *,
    target_epsilon: float,
    delta: float,
    population: int,
    clients_per_round: int | None = None,
    rounds: int | None = None,
    distributed: DistributedShape | None = None,
) -> BudgetPlan:
    """Fill in the unset cohort size and rounds for the budget and calibrate z (RDP; the Skellam
    accountant for distributed DP, whose `distributed` shape says the model size and bit width)."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyError(f"the privacy budget must be a positive finite epsilon, got {target_epsilon}")
    if population < 1:
        raise PrivacyError("a privacy plan needs at least one user")
    accounting.validate_delta(delta, population)
    planned = []
    if rounds is None:
        rounds = planned_rounds(target_epsilon)
        planned.append("rounds")
    if clients_per_round is None:
        clients_per_round = (planned_cohort(population) if distributed is None else
                             distributed.best_cohort(target_epsilon, delta, population, rounds))
        planned.insert(0, "clients_per_round")
    q = min(1.0, clients_per_round / population)
    if distributed is not None:
        z = distributed.calibrate(target_epsilon, q, rounds, delta, clients_per_round)
        spec = distributed.spec(z, clients_per_round, q)
        eps = ddp_accounting.epsilon(spec, sampling_rate=q, rounds=rounds, delta=delta)
        return BudgetPlan(clients_per_round=clients_per_round, rounds=rounds, noise_multiplier=z, sampling_rate=q,
                          epsilon_rdp=eps, epsilon_pld=math.nan, delta=delta, population=population,
                          planned=tuple(planned), distributed=spec)
    z = accounting.calibrate_noise_multiplier(target_epsilon=target_epsilon, sampling_rate=q, rounds=rounds, delta=delta)
    return BudgetPlan(
        clients_per_round=clients_per_round,
        rounds=rounds,
        noise_multiplier=z,
        sampling_rate=q,
        epsilon_rdp=accounting.epsilon_rdp(z, q, rounds, delta),
        epsilon_pld=accounting.epsilon_pld(z, q, rounds, delta),
        delta=delta,
        population=population,
        planned=tuple(planned),
    )


def distributed_shape(config: SimulationConfig, model_values: int | None, *,
                      noise_reporters: Callable[[float], int] | None = None) -> DistributedShape | None:
    """The shape distributed DP's accounting needs for `config` (None for the other modes)."""
    if config.dp != "distributed":
        return None
    if model_values is None:
        raise PrivacyError("distributed DP's accounting needs the size of the model")
    return DistributedShape(dim=model_values, bits=config.dp_bits, clip=config.clip, noise_reporters=noise_reporters)


def plan_config(config: SimulationConfig, train_users: np.ndarray, *, rounds: int | None = None,
                clients_per_round: int | None = None,
                model_values: int | None = None) -> tuple[SimulationConfig, BudgetPlan]:
    """`config` with the planned cohort, rounds (those not given here are planned) and noise for
    its budget over the users who have train ratings (the clients), and the plan."""
    if config.target_epsilon is None:
        raise PrivacyError("a privacy plan needs a target epsilon")
    population = int(np.unique(train_users).size)
    plan = plan_budget(target_epsilon=config.target_epsilon, delta=config.delta, population=population,
                       clients_per_round=clients_per_round, rounds=rounds,
                       distributed=distributed_shape(config, model_values))
    return _recorded(config, plan), plan


def plan_run(config: SimulationConfig, population: int, *, rounds: int | None,
             clients_per_round: int | None, distributed: DistributedShape | None = None,
             ) -> tuple[SimulationConfig, BudgetPlan | None]:
    """The one planning step of every entry point (`fedrec simulate` for its users, `fedrec up`
    and `fedrec serve` for their devices): with a target ε and no noise multiplier, the cohort and
    rounds not given (None) are planned for `population` and recorded in the config with the
    noise multiplier; otherwise (or when the config holds a plan already: a coordinator.toml that
    `fedrec up` wrote) the config is returned as it is, with no plan."""
    if (not config.private or config.target_epsilon is None or config.noise_multiplier is not None
            or config.planned_noise_multiplier is not None):
        return config, None
    plan = plan_budget(target_epsilon=config.target_epsilon, delta=config.delta, population=population,
                       clients_per_round=clients_per_round, rounds=rounds, distributed=distributed)
    return _recorded(config, plan), plan


def _recorded(config: SimulationConfig, plan: BudgetPlan) -> SimulationConfig:
    return dataclasses.replace(config, clients_per_round=plan.clients_per_round, rounds=plan.rounds,
                               planned_noise_multiplier=plan.noise_multiplier)


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """Noise multiplier, sampling rate and the number of rounds the budget allows."""

    noise_multiplier: float
    sampling_rate: float
    rounds: int
    how: str  # how the plan was made, for the report
    distributed: DistributedDpSpec | None = None  # distributed DP: the round's spec


def plan_privacy(config: SimulationConfig, num_clients: int, *,
                 distributed: DistributedShape | None = None) -> PrivacyPlan:
    """Decide (z, q, T) for `num_clients` clients (users in a simulation, devices in a deployment).
    --target-epsilon alone runs config.rounds rounds at the planner's z (recorded in the config by
    `plan_run`; a config no planner saw is calibrated here); with --noise-multiplier too, training
    stops at the last round that stays within budget. Distributed DP needs its `distributed`
    shape, and is accounted by the Skellam accountant (`privacy.distributed`)."""
    q = min(1.0, config.clients_per_round / num_clients)
    if not config.private:
        return PrivacyPlan(0.0, q, config.rounds, "non-private")
    accounting.validate_delta(config.delta, num_clients)
    if config.noise_multiplier is None and config.target_epsilon is None:
        raise PrivacyError("--dp needs --noise-multiplier or --target-epsilon (or both)")
    if config.dp == "distributed" and distributed is None:
        raise PrivacyError("distributed DP's plan needs the model's size (a DistributedShape)")
    expected = q * num_clients
    how_accounted = "RDP, Skellam" if distributed is not None else "RDP"

    def spent(z: float, rounds: int) -> float:
        if distributed is None:
            return accounting.epsilon_rdp(z, q, rounds, config.delta)
        return ddp_accounting.epsilon(distributed.spec(z, expected, q), sampling_rate=q, rounds=rounds,
                                      delta=config.delta)

    def plan(z: float, rounds: int, how: str) -> PrivacyPlan:
        spec = None if distributed is None else distributed.spec(z, expected, q)
        return PrivacyPlan(z, q, rounds, how, spec)

    if config.noise_multiplier is None:
        target, z = config.target_epsilon, config.planned_noise_multiplier
        assert target is not None  # refused above otherwise
        if z is None:
            if distributed is None:
                z = accounting.calibrate_noise_multiplier(
                    target_epsilon=target, sampling_rate=q, rounds=config.rounds, delta=config.delta)
            else:
                z = distributed.calibrate(target, q, config.rounds, config.delta, expected)
        elif spent(z, config.rounds) > target * (1 + 1e-9):
            raise PrivacyError(f"the planned noise multiplier {z:g} spends more than epsilon {target} over "
                             f"{config.rounds} rounds at sampling rate {q:.4g} ({num_clients} clients); it was "
                             "planned for another population or cohort: plan again (leave planned_noise_multiplier out)")
        return plan(z, config.rounds, f"noise calibrated ({how_accounted}) to epsilon {target} over {config.rounds} rounds")
    given = config.noise_multiplier
    if config.target_epsilon is None:
        return plan(given, config.rounds, "fixed noise multiplier, no budget")
    rounds = accounting.max_rounds_within(target_epsilon=config.target_epsilon, noise_multiplier=given,
                                          sampling_rate=q, delta=config.delta, limit=config.rounds,
                                          epsilon_of=lambda t: spent(given, t))
    if rounds == 0:
        raise PrivacyError(f"noise multiplier {given} exceeds epsilon {config.target_epsilon} in a single round")
    return plan(given, rounds,
                f"stops after {rounds} rounds, the last within epsilon {config.target_epsilon} ({how_accounted})")
