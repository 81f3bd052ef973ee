"""The coordinator's model: what a round's secure sum does to the global parameters, durably.

    secure sum (decoded) --SummedUpdateAggregator--> mean delta (+ DP noise, DpEvent)
        --ε ledger (committed first)--> ServerModel.apply (tff optimizer) --> checkpoint + round completed

The same DP query and server optimizer as the simulation (`server_aggregation`), applied to the
sum that secure aggregation revealed. Each DP event is recorded under the round *attempt*, before
the noised mean is used, so a kill after the noise was drawn but before the round committed is
counted (ε over-counted by one round at worst, never under-counted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from coordinator.catalog import Catalog
from coordinator.config import CoordinatorConfig
from coordinator.errors import CoordinatorError
from coordinator.server_aggregation import ServerModel, SummedUpdateAggregator
from coordinator.state_store import Checkpoint, StateError, StateStore
from protocol import distributed_dp
from protocol.distributed_dp import DistributedDpSpec
from protocol.upload import UploadLayout
from secagg.quantize import FixedPoint
from tff_pipeline.privacy import distributed as ddp_accounting
from tff_pipeline.privacy.ledger import PrivacyLedger


class BudgetExhausted(CoordinatorError, RuntimeError):
    """The next round would spend more ε than the target."""


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    """What the next round's task announces."""

    clip_norm: float
    private: bool
    ranking_scale: float
    max_weight: int
    value_bound: float
    distributed: DistributedDpSpec | None = None  # distributed DP: what each device's encoding follows


@dataclasses.dataclass(frozen=True)
class PrivacySetting:
    noise_multiplier: float
    sampling_rate: float
    expected_clients: float
    rounds: int
    noise_reporters: int | None = None  # distributed DP's m (the round goal its noise shares are sized for)


class ServerTraining:
    """The global model of one coordinator run, restored from its state folder."""

    def __init__(self, *, store: StateStore, config: CoordinatorConfig, catalog: Catalog,
                 privacy: PrivacySetting) -> None:
        from tff_pipeline import model

        self.store, self.config, self.catalog, self.privacy = store, config, catalog, privacy
        training = config.training
        self.model_config = training.model_config(catalog.num_items)
        if self.model_config.dim < 1:
            raise ValueError("the coordinator needs dim >= 1 (devices run the TFLite export)")
        self.layout = UploadLayout(catalog.num_items, self.model_config.dim)
        self.distributed = None if training.dp != "distributed" else DistributedDpSpec(
            bits=training.dp_bits, l2_clip=training.clip, noise_multiplier=privacy.noise_multiplier,
            clients=max(1, math.ceil(privacy.expected_clients)), noise_reporters=int(privacy.noise_reporters or 0),
            dim=self.layout.num_model_values)
        self.aggregator = SummedUpdateAggregator(
            config=training.aggregator_config(noise_multiplier=privacy.noise_multiplier,
                                              expected_clients=privacy.expected_clients),
            layout=self.layout, distributed=self.distributed)
        self.ledger = PrivacyLedger(store.connection)
        optimizer = training.server_optimizer_config()
        saved = store.latest_checkpoint()
        if saved is None:
            initial = model.initial_global_params(self.model_config, seed=training.seed)
            self.model = ServerModel.create(params=[np.asarray(p) for p in initial], optimizer=optimizer)
            self.aggregator_state = self.aggregator.initial_state()
            self.params_version = 0
            store.commit_round(None, self._checkpoint({"round": 0}), reporters=0, dropouts=0, bytes_in=0, bytes_out=0)
        else:
            arrays = saved.arrays
            try:
                self.model = ServerModel.restore(params=arrays["params"], optimizer=optimizer,
                                                 optimizer_arrays=arrays.get("optimizer", []))
                self.aggregator_state = self.aggregator.state_from_arrays(arrays.get("aggregator", []))
            except (KeyError, ValueError) as error:
                raise StateError(f"{store.state_dir}: the checkpoint of params version {saved.params_version} does "
                                 f"not fit this configuration ({error})") from None
            self.params_version = saved.params_version

    @property
    def private(self) -> bool:
        return self.config.training.private

    @property
    def params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.model.params)  # type: ignore[return-value]  # the model holds exactly these three

    def settings(self) -> RoundSettings:
        deployment = self.config.deployment
        if self.private:
            device_clip = self.aggregator.device_clip(self.aggregator_state)
            assert device_clip is not None  # a private aggregator always has a clip
            clip = float(device_clip)
            return RoundSettings(clip, True, float(self.config.training.dp_ranking_scale), 1, max(clip, 1.0),
                                 self.distributed)
        clip = deployment.plain_clip
        return RoundSettings(clip, False, 1.0, deployment.max_weight, max(clip, 1.0))

    def decode(self, total: np.ndarray, fixed_point: FixedPoint, rotation_seed: bytes | None) -> np.ndarray:
        """The round's secure sum (elements of Z_2^b) as the upload layout's float vector: fixed point
        decoded, or under distributed DP unrotated and unscaled (its model values, with the weight slot
        left for `apply` to fill: every device counts once)."""
        if self.distributed is None:
            return fixed_point.decode(total)
        assert rotation_seed is not None  # every distributed round has one
        vector = np.zeros(self.layout.length)
        vector[:self.layout.num_model_values] = distributed_dp.decode_sum(total, self.distributed, rotation_seed)
        return vector

    def epsilon(self) -> float | None:
        if not self.private:
            return None
        if not self.ledger.events():
            return 0.0
        return float(self.ledger.epsilon(self.config.training.delta)[0])

    def check_budget(self) -> None:
        """Refuse a round that could take ε past the target (DP runs with a target only)."""
        target = self.config.training.target_epsilon
        if not self.private or target is None:
            return
        if self.ledger.would_exceed(self._expected_event(), self.privacy.sampling_rate, target_epsilon=target,
                                    delta=self.config.training.delta):
            raise BudgetExhausted(f"another round would exceed ε = {target} (spent {self.epsilon():.4g})")

    def apply(self, *, attempt: int, summed: np.ndarray, num_reporters: int, dropouts: int, bytes_in: int,
              bytes_out: int) -> int:
        """Aggregate a round's decoded secure sum, step the model, commit; returns the new params version."""
        if self.distributed is not None:  # devices send no weight slot: each counts once
            summed = np.array(summed, np.float64)
            summed[self.layout.weight_index] = num_reporters
        result = self.aggregator.aggregate(self.aggregator_state, summed, num_reporters)
        if result.dp_event is not None:
            self.ledger.record(attempt, result.dp_event, self.privacy.sampling_rate)
        model = self.model.apply(result.mean_delta)
        version = self.params_version + 1
        summary = {"round": version, "attempt": attempt, "reporters": num_reporters, "dropouts": dropouts,
                   "clip": self.settings().clip_norm if self.private else None}
        previous = (self.model, self.aggregator_state, self.params_version)
        self.model, self.aggregator_state, self.params_version = model, result.new_state, version
        summary["epsilon"] = self.epsilon()
        try:
            self.store.commit_round(attempt, self._checkpoint(summary), reporters=num_reporters, dropouts=dropouts,
                                    bytes_in=bytes_in, bytes_out=bytes_out)
        except BaseException:
            self.model, self.aggregator_state, self.params_version = previous
            raise
        return version

    def _checkpoint(self, summary: dict[str, Any]) -> Checkpoint:
        return Checkpoint(self.params_version, {
            "params": [np.asarray(p) for p in self.model.params],
            "optimizer": self.model.optimizer_arrays(),
            "aggregator": self.aggregator.state_to_arrays(self.aggregator_state),
        }, summary)

    def _expected_event(self) -> Any:
        """The DP event of one more round. The noise does not depend on the data, so a dry run on
        a zero sum gives it (its noised result is discarded, never released)."""
        if self.distributed is not None:
            return ddp_accounting.round_event(self.distributed)
        zeros = np.zeros(self.layout.length)
        zeros[self.layout.weight_index] = 1.0
        return self.aggregator.aggregate(self.aggregator_state, zeros, 1).dp_event


def sampling_setting(config: CoordinatorConfig, population: int) -> PrivacySetting:
    """Noise multiplier, sampling rate and rounds for a run over `population` enrolled devices,
    planned as `fedrec simulate` plans them (`planner.plan_privacy`)."""
    from coordinator.config import distributed_shape
    from tff_pipeline.privacy.planner import plan_privacy

    plan = plan_privacy(config.training, population, distributed=distributed_shape(config))
    expected = plan.sampling_rate * population
    reporters = None if plan.distributed is None else plan.distributed.noise_reporters
    return PrivacySetting(plan.noise_multiplier, plan.sampling_rate, expected, plan.rounds, reporters)

