"""The federated training run: sample cohorts, run TFF rounds, account privacy, evaluate,
checkpoint every round, and assemble the report (with baselines computed on the same split).

Privacy is accounted from what was applied: after every round the DP event that TFF's
`DifferentiallyPrivateFactory` keeps in its state (the event its query returned when it noised
the round) is recorded, as the coordinator's ledger records its rounds
(`PoissonSampledDpEvent(q, event)`), kept in the checkpoints, and composed by
`accounting.epsilon`, the function the deployment's report uses for its ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import tensorflow as tf

from protocol.distributed_dp import l1_bound
from tff_pipeline import baselines, centralized, checkpoint, model, personalized_eval
from tff_pipeline.config import SimulationConfig
from tff_pipeline.data import DatasetSplit, group_by_user
from tff_pipeline.errors import PipelineError
from tff_pipeline.federated import client_work, process, sampling
from tff_pipeline.privacy import accounting, skellam
from tff_pipeline.privacy import distributed as ddp_accounting
from tff_pipeline.privacy.distributed import model_values
from tff_pipeline.privacy.events import concrete_event, decode_event, encode_event, sampled_round
from tff_pipeline.privacy.planner import PrivacyPlan, distributed_shape, plan_privacy
from tff_pipeline.run_folder import RunFolder, RunFolderError, RunIdentity


class TrainingDiverged(PipelineError, ValueError):
    """The global parameters became non-finite, or so large that TensorFlow's computation with them
    failed (a ValueError: the CLI prints it as one line); the round was not saved."""


# What TensorFlow says, on the TFF worker or in our own evaluation, when the numbers it computes
# with have overflowed to inf/NaN: the user's ridge systems (tf.linalg.solve) are no longer
# invertible, DP clipping finds no finite norm, a numerics check trips. Only these are read as a
# diverged model; any other failure of a round (a shape error, a lost worker) keeps its traceback.
_NON_FINITE_REASONS = re.compile(
    r"(?:input )?matrix is not invertible"
    r"|Cholesky decomposition was not successful"
    r"|Found Inf or NaN global norm"
    r"|Tensor had (?:[+-]?Inf|NaN)(?: and (?:[+-]?Inf|NaN))? values",
    re.IGNORECASE,
)


def _non_finite_reason(error: BaseException) -> str | None:
    """TensorFlow's reason, in its words, if `error` is a computation that failed on non-finite
    values: the TFF worker's error as it arrives over gRPC (INTERNAL "Failed to run computation:
    Input matrix is not invertible. [[{{node MatrixSolve_1}}]] ..."), or TensorFlow's own
    InvalidArgumentError here; errors that wrap one (`raise ... from`) are looked through."""
    import grpc

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = None
        if isinstance(current, grpc.RpcError) and isinstance(current, grpc.Call):
            if current.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT):
                text = current.details()
        elif isinstance(current, tf.errors.InvalidArgumentError):
            text = current.message
        match = _NON_FINITE_REASONS.search(text or "")
        if match:
            return match.group(0)
        current = current.__cause__
    return None


@contextlib.contextmanager
def _stop_if_non_finite(round_num: int, step: str) -> Iterator[None]:
    """Turn a failure of `step` on non-finite values into TrainingDiverged naming the round."""
    try:
        yield
    except Exception as error:
        reason = _non_finite_reason(error)
        if reason is None:
            raise
        raise TrainingDiverged(
            f"round {round_num}: the model diverged ({step} failed: {reason}, as the parameters overflowed); "
            "lower --local-lr or --server-lr and start a new run") from error


class ClientPopulation:
    """Per-user client datasets, built once and on demand."""

    def __init__(self, split: DatasetSplit, canaries: Sequence[np.ndarray] = ()) -> None:
        self._arrays = group_by_user(split.train, split.num_users)
        self.client_ids = np.array([u for u, (items, _) in enumerate(self._arrays) if len(items)], np.int64)
        self._cache: dict[int, Any] = {}
        # The audit's canary clients come after the users (positions len(client_ids)...).
        self._canaries = [client_work.canary_data(update) for update in canaries]

    def __len__(self) -> int:
        return len(self.client_ids) + len(self._canaries)

    def datasets(self, positions: np.ndarray) -> list[Any]:
        result = []
        for position in positions:
            if position >= len(self.client_ids):
                result.append(self._canaries[position - len(self.client_ids)])
                continue
            user = int(self.client_ids[position])
            if user not in self._cache:
                self._cache[user] = client_work.client_data(*self._arrays[user])
            result.append(self._cache[user])
        return result

    def groups(self, positions: np.ndarray, users_per_client: int) -> list[Any]:
        """The users at `positions` as client groups of at most `users_per_client` users
        (`client_work.group_data`), as few groups as that allows, of balanced sizes. Users only:
        the audit's canaries are single clients (and the audit is DP, which groups do not serve)."""
        if len(positions) and int(np.max(positions)) >= len(self.client_ids):
            raise ValueError("canary clients cannot be grouped")
        count = -(-len(positions) // users_per_client)
        if not count:
            return []
        return [client_work.group_data(self.datasets(chunk)) for chunk in np.array_split(np.asarray(positions), count)]

    def clients(self, positions: np.ndarray, users_per_client: int | None) -> list[Any]:
        """The TFF client values of a cohort: one per user (`datasets`), or groups (`groups`)."""
        return self.datasets(positions) if users_per_client is None else self.groups(positions, users_per_client)


@dataclasses.dataclass(frozen=True)
class RunResult:
    report: dict[str, Any]
    params: model.GlobalParams  # final global parameters (the server's model)


RoundCallback = Callable[[dict[str, Any]], None]


def _adaptive_clip(metrics: Any) -> float | None:
    """The DP aggregator's current clip norm from a round's metrics (None for the plain mean,
    whose measurements are empty)."""
    aggregator = metrics.get("aggregator") if isinstance(metrics, Mapping) else None
    query = aggregator.get("dp_query_metrics") if isinstance(aggregator, Mapping) else None
    return query.get("clip") if isinstance(query, Mapping) else None


def _applied_event(state: Any) -> dp_accounting.DpEvent:
    """The DP event of the aggregator's last round: `DifferentiallyPrivateFactory` keeps the event
    its query returned in its state (`DPAggregatorState.dp_event`, a named tuple, as TFF's
    `extract_dp_event_from_state` reads it); a state that has seen no round yet holds the event
    its first round would apply."""

    def plain(leaf: Any) -> Any:  # a state read from a checkpoint holds the event's names as numpy bytes
        return leaf.item() if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "S" else leaf

    named = tf.nest.map_structure(plain, state.aggregator.dp_event)
    return concrete_event(dp_accounting.DpEvent.from_named_tuple(named))


def _distributed_event(metrics: Any, cohort_size: int, plan: PrivacyPlan) -> dp_accounting.DpEvent:
    """The Skellam release of a distributed-DP round as TFF's `DistributedDpSumFactory` applied it
    (its measurements: the scaled, inflated L2 bound and each client's noise stddev), charged for
    the noise shares that arrived, at most m (`privacy.distributed`). An empty cohort releases
    nothing new; it is charged the planned round."""
    assert plan.distributed is not None
    measured = metrics.get("aggregator") if isinstance(metrics, Mapping) else None
    if not cohort_size or not isinstance(measured, Mapping):
        return ddp_accounting.round_event(plan.distributed)
    l2 = float(measured["scaled_inflated_l2"])
    shares = min(cohort_size, plan.distributed.noise_reporters)
    return skellam.SkellamDpEvent(float(l1_bound(l2, int(measured["padded_dim"]))), l2,
                                  shares * float(measured["scaled_local_stddev"]) ** 2)


def run(
    config: SimulationConfig,
    split: DatasetSplit,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    identity: RunIdentity | None = None,
    on_round: RoundCallback | None = None,
    on_start: Callable[[int, int], None] | None = None,
    canaries: Sequence[np.ndarray] = (),
    applied_noise_multiplier: float | None = None,
) -> RunResult:
    """Train, evaluate, and return the report and the final global parameters.

    With `out_dir`, the run claims that folder (`RunFolder.start`: refused if it holds another
    run, unless `overwrite`) or, with `resume`, continues the run saved there; a caller that
    already did either passes the `identity` it got. The privacy audit (`tff_pipeline.audit`)
    adds `canaries` (clients whose upload is a fixed vector, sampled like the users) and, to show
    that it catches a broken run, may make the aggregator apply `applied_noise_multiplier`
    instead of the plan's.
    """
    config.check_model_size(split.num_items)
    folder = None if out_dir is None else RunFolder(out_dir)
    if folder is not None:
        if identity is None:
            identity = folder.read_identity() if resume else folder.start(config, overwrite=overwrite)
        if identity.config != config:
            raise RunFolderError(f"{folder / 'config.json'}: the configuration differs from the one given; "
                                 "a run is resumed with the configuration it started with")
    population = ClientPopulation(split, canaries)
    if canaries and config.users_per_client not in (None, 1):
        raise ValueError("the privacy audit's canaries are single clients: run it with one user per client")
    group_size = None if canaries else config.client_group_size
    shape = distributed_shape(config, model_values(split.num_items, config.dim))
    plan = plan_privacy(config, len(population), distributed=shape)
    model_config = config.model_config(split.num_items)
    learning_process = process.build_fedrec_process(
        model_config,
        aggregator=config.aggregator_config(
            noise_multiplier=plan.noise_multiplier if applied_noise_multiplier is None else applied_noise_multiplier,
            expected_clients=plan.sampling_rate * len(population),
            noise_reporters=None if plan.distributed is None else plan.distributed.noise_reporters,
        ),
        server_optimizer=config.server_optimizer_config(),
        seed=config.seed,
        canaries=len(canaries) > 0,
        grouped=group_size is not None,
    )
    state = learning_process.initialize()
    start_round, history, train_seconds = 0, [], 0.0
    dp_events: list[dp_accounting.DpEvent] = []  # one a round, as applied (private runs)
    if folder is not None and resume:
        assert identity is not None  # read or started above whenever there is a folder
        loaded = checkpoint.load(folder.checkpoints, structure=state, identity=identity)
        if loaded is not None:
            start_round, state, meta = loaded
            history, train_seconds = meta["history"], meta["train_seconds"]
            dp_events = _saved_events(meta, start_round, plan if config.private else None, folder.checkpoints)
        if start_round > plan.rounds:
            raise checkpoint.CheckpointError(
                f"{folder.checkpoints}: holds round {start_round}, but this run plans {plan.rounds} rounds")
    if on_start:
        on_start(start_round, plan.rounds)

    for round_num in range(start_round + 1, plan.rounds + 1):
        if config.private:
            cohort = sampling.poisson_cohort(
                num_clients=len(population), sampling_rate=plan.sampling_rate,
                seed=config.seed, round_num=round_num,
            )
        else:
            cohort = sampling.uniform_cohort(
                num_clients=len(population), cohort_size=config.clients_per_round,
                seed=config.seed, round_num=round_num,
            )
        started = time.perf_counter()
        if len(cohort):  # an empty Poisson cohort releases nothing but still counts as a round
            with _stop_if_non_finite(round_num, "TFF's computation of the round"):
                output = learning_process.next(state, population.clients(cohort, group_size))
            _refuse_divergence(output.state, output.metrics, round_num)
            state = output.state
            metrics = output.metrics
        else:
            metrics = {}
        train_seconds += time.perf_counter() - started
        row: dict[str, Any] = {"round": round_num, "cohort": int(len(cohort)), "train_seconds": train_seconds}
        clip = _adaptive_clip(metrics)
        row["clip"] = float(clip) if clip is not None else None
        if config.private:
            # An empty cohort is charged too: the event the aggregator's state holds (its last).
            applied = _applied_event(state) if plan.distributed is None else _distributed_event(metrics, len(cohort), plan)
            dp_events.append(sampled_round(applied, plan.sampling_rate))
            row["epsilon_rdp"] = accounting.epsilon(dp_events, config.delta, with_pld=False).rdp
        if round_num % config.eval_every == 0 or round_num == plan.rounds:
            with _stop_if_non_finite(round_num, "evaluating the model"):
                evaluated = _evaluate(learning_process, state, split, model_config)
            row.update(evaluated)
        history.append(row)
        if folder is not None:
            assert identity is not None
            checkpoint.save(
                folder.checkpoints, round_num=round_num, state=state, identity=identity,
                meta={"history": history, "train_seconds": train_seconds,
                      "dp_events": [encode_event(event) for event in dp_events]},
            )
        if on_round:
            on_round(row)

    with _stop_if_non_finite(len(history) and history[-1]["round"], "evaluating the final model"):
        final = _evaluate(learning_process, state, split, model_config)
    report = assemble_report(config, split, plan, final, history, train_seconds, len(population), model_config,
                             events=dp_events)
    report["run_id"] = None if identity is None else identity.run_id
    return RunResult(report=report, params=_global_params(learning_process, state))


def _saved_events(meta: dict[str, Any], rounds: int, plan: PrivacyPlan | None,
                  where: Path) -> list[dp_accounting.DpEvent]:
    """The DP events of the `rounds` rounds a checkpoint holds (none without DP, `plan` None).

    A checkpoint written before the events were kept (fedrec before issue 17) has none: its rounds
    are charged the plan's event, (z, q) each, which is what that version reported for them."""
    private = plan is not None
    if plan is not None and "dp_events" not in meta:
        return [accounting.round_event(plan.noise_multiplier, plan.sampling_rate)] * rounds
    texts = meta.get("dp_events", [] if not private else None)
    try:
        if not isinstance(texts, list) or len(texts) != (rounds if private else 0):
            raise ValueError(f"{rounds} rounds, {'no' if texts is None else len(texts)} DP events")
        return [decode_event(text) for text in texts]
    except (TypeError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{where}: the checkpoint does not hold the DP events of its rounds ({error}; "
                                         "written by an older fedrec?); start a new run") from None


def _refuse_divergence(state: Any, metrics: Any, round_num: int) -> None:
    """Stop at a non-finite round instead of training on silently (a huge learning rate, say).

    TFF's finalizer does not apply a non-finite update: it keeps the old weights and counts
    `update_non_finite`, so without this check such a run "finishes" without ever training.
    """
    finalizer = metrics.get("finalizer") if isinstance(metrics, Mapping) else None
    rejected = finalizer.get("update_non_finite") if isinstance(finalizer, Mapping) else None
    non_finite_state = any(
        np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v)) for v in tf.nest.flatten(state)
    )
    if non_finite_state or (rejected is not None and int(rejected) > 0):
        raise TrainingDiverged(
            f"round {round_num}: the model diverged (the update was not finite); the last saved checkpoint is "
            "the round before. Lower --local-lr or --server-lr and start a new run")


def _global_params(learning_process, state) -> model.GlobalParams:
    weights = learning_process.get_model_weights(state)
    return model.GlobalParams(*(np.asarray(x) for x in weights.trainable))


def _evaluate(learning_process, state, split, model_config) -> dict[str, float | None]:
    return personalized_eval.evaluate_global_model(_global_params(learning_process, state), split, model_config)


def assemble_report(
    config: SimulationConfig,
    split: DatasetSplit,
    plan: PrivacyPlan,
    final: dict[str, float | None],
    history: list[dict[str, Any]],
    train_seconds: float,
    num_clients: int,
    model_config: model.ModelConfig,
    *,
    events: Sequence[dp_accounting.DpEvent],
) -> dict[str, Any]:
    """The report of a run. Under DP its ε is `events` composed (`accounting.epsilon`): the events
    the simulation's aggregator applied, or the coordinator's ledger (`coordinator.report`)."""
    rounds_done = len(history) and history[-1]["round"]
    seconds_per_round = train_seconds / max(1, len(history))
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "data": {
            "name": split.name, "num_users": split.num_users, "num_items": split.num_items,
            "num_clients": num_clients, "train_ratings": len(split.train), "test_ratings": len(split.test),
            "ranking_users": len(split.ranking.users), "ranking_protocol": split.ranking.protocol,
            "rating_scale": list(split.rating_scale),
        },
        "final": final,
        "baselines": {"centralized": None, "biases": None, "global_mean": None, "local_only": None, "popularity": None},
        "privacy": {
            "epsilon_rdp": None, "epsilon_pld": None, "delta": config.delta if config.private else None,
            "noise_multiplier": plan.noise_multiplier if config.private else None,
            "sampling_rate": plan.sampling_rate, "rounds": rounds_done, "plan": plan.how,
            "sampling": "poisson" if config.private else "uniform fixed-size (no DP)",
        },
        "timing": {
            "seconds_total": train_seconds, "seconds_per_round": seconds_per_round,
            # Rounds that together touch every client once in expectation.
            "federated_pass_seconds": seconds_per_round * num_clients / max(1e-9, plan.sampling_rate * num_clients),
            "centralized_epoch_seconds": None,
        },
        "history": history,
    }
    if config.private:
        spent = accounting.epsilon(events, config.delta)
        report["privacy"]["epsilon_rdp"] = spent.rdp
        report["privacy"]["epsilon_pld"] = spent.pld
    if config.baselines:
        report["baselines"].update(baselines.all_simple_baselines(split))
        reference = centralized.train_centralized(
            split, model_config, epochs=config.centralized_epochs, item_l2=config.user_l2, seed=config.seed
        )
        report["baselines"]["centralized"] = personalized_eval.evaluate_global_model(
            reference.params, split, model_config
        )
        # The first epoch includes tracing; report the median of the others.
        steady = reference.epoch_seconds[1:] or reference.epoch_seconds
        report["timing"]["centralized_epoch_seconds"] = float(np.median(steady))
    return report
