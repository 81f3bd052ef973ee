"""The server's half of a round: the secure sum of the uploads -> mean delta -> new global model.

    device: clip (DP), pack (`protocol.upload`) --secure sum--> summed vector, num_reporters
        --SummedUpdateAggregator.aggregate--> mean delta (+ DpEvent for the ledger)
        --ServerModel.apply--> new global params and optimizer state

The server only ever sees the sum over the surviving devices, so everything here is a function
of that sum, and it applies the simulation's own maths rather than a re-derivation:
- Without DP, the sum holds count-weighted parts 0..2 and their total weight, and the per-device
  part 3: the mean is `weighted_mean.mean_of_sums`, the report step of the simulation's
  `ExampleWeightedMeanFactory(per_device_parts=upload.PER_DEVICE_PARTS)`.
- Under DP, the tensorflow_privacy query of the simulation's DP factory for the same
  `AggregatorConfig` (`aggregation.dp_query`). Its queries are linear in their sample state, so
  `get_noised_result` on the sum of preprocessed records equals accumulating them one by one; the
  devices did the preprocessing (clipping to `device_clip`, and the adaptive clip's indicator,
  which the server centres as the query's record `indicator - 0.5` does: `sum - 0.5 *
  num_reporters`). The ranking step comes back to its scale by `aggregation.unscale_parts`, as
  in the simulation's `PartScaledFactory`.
- The server optimizer is `ServerOptimizerConfig.build()`, stepped eagerly on
  `process.pseudo_gradient`, the function of the simulation's `build_delta_finalizer`.
States are serialisable to lists of numpy arrays (checkpoints, `coordinator.state_store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import dp_accounting
import numpy as np
import tensorflow as tf

from protocol import upload
from protocol.distributed_dp import DistributedDpSpec
from tff_pipeline.federated import aggregation, process, weighted_mean
from tff_pipeline.privacy import distributed as ddp_accounting
from tff_pipeline.privacy.events import concrete_event

# The query's global state (a nest of float32 scalar tensors); `()` without DP.
AggregatorState = Any
# A tff.learning.optimizers state (a nest of tensors and Python numbers).
OptimizerState = Any

MeanDelta = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
GlobalParams = tuple[np.ndarray, np.ndarray, np.ndarray]


class AggregateResult(NamedTuple):
    """What a round's aggregation produced: the mean delta of the 4 uploaded parts (float32, in
    `protocol.upload.UPDATE_PARTS` order), the aggregator's next state, and the DpEvent to charge
    (None without DP)."""

    mean_delta: MeanDelta
    new_state: AggregatorState
    dp_event: dp_accounting.DpEvent | None


class SummedUpdateAggregator:
    """Turns the secure sum of a round's uploads into the mean delta the server applies."""

    def __init__(self, *, config: aggregation.AggregatorConfig, layout: upload.UploadLayout,
                 distributed: DistributedDpSpec | None = None) -> None:
        if not config.part_scale > 0:
            raise ValueError(f"the part scale must be > 0, got {config.part_scale}")
        if (config.kind is aggregation.AggregatorKind.DP_DISTRIBUTED) != (distributed is not None):
            raise ValueError("distributed DP's aggregation needs its spec, and only it")
        self._config = config
        self._layout = layout
        self._distributed = distributed
        self._query = aggregation.dp_query(config) if config.is_private and distributed is None else None
        self._record_specs = tuple(tf.TensorSpec(shape, tf.float64) for shape in layout.part_shapes)

    @property
    def config(self) -> aggregation.AggregatorConfig:
        return self._config

    @property
    def layout(self) -> upload.UploadLayout:
        return self._layout

    def initial_state(self) -> AggregatorState:
        return () if self._query is None else self._query.initial_global_state()

    def device_clip(self, state: AggregatorState) -> float | None:
        """The L2 bound devices clip to in the round that starts from `state` (what the query's own
        `preprocess_record` would clip to); None without DP."""
        if self._distributed is not None:
            return self._distributed.l2_clip
        if self._query is None:
            return None
        params = self._query.derive_sample_params(state)
        if self._config.kind is aggregation.AggregatorKind.DP_ADAPTIVE:
            params = params.sum_params
        return float(params)

    def aggregate(self, state: AggregatorState, summed: np.ndarray, num_reporters: int) -> AggregateResult:
        """The mean delta from `summed`, the secure sum (float64, `layout.length`) of the uploads
        of `num_reporters` devices that clipped to `device_clip(state)`. Raises ValueError for a
        vector that cannot be such a sum (shape, non-finite values, slots out of range). Under DP
        the result is noised: charge `dp_event` to the ledger before using it."""
        if isinstance(num_reporters, bool) or not isinstance(num_reporters, (int, np.integer)) or num_reporters < 0:
            raise ValueError(f"num_reporters must be an integer >= 0, got {num_reporters!r}")
        num_reporters = int(num_reporters)
        summed = np.asarray(summed, np.float64)
        parts, weight, unclipped = self._layout.unpack(summed)
        if not np.all(np.isfinite(summed)):
            raise ValueError("the summed upload holds non-finite values")
        if self._distributed is not None:
            return self._noised_by_devices(state, parts, weight, num_reporters)
        if self._query is None:
            return AggregateResult(self._mean(parts, weight, num_reporters), state, None)
        return self._noised_mean(state, parts, weight, unclipped, num_reporters)

    def _mean(self, parts: tuple[np.ndarray, ...], weight: float, num_reporters: int) -> MeanDelta:
        """Parts 0..2 per example (divided by the summed weight), part 3 per device; zeros for an
        empty denominator (`weighted_mean.mean_of_sums`, in float64)."""
        if weight < 0:
            raise ValueError(f"the summed weight is negative ({weight})")
        mean = weighted_mean.mean_of_sums([tf.constant(part, tf.float64) for part in parts],
                                          tf.constant(weight, tf.float64), tf.constant(num_reporters, tf.float64),
                                          upload.PER_DEVICE_PARTS)
        return tuple(np.asarray(value.numpy(), np.float32) for value in mean)  # type: ignore[return-value]  # one per part

    def _noised_mean(
        self, state: AggregatorState, parts: tuple[np.ndarray, ...], weight: float, unclipped: float, num_reporters: int
    ) -> AggregateResult:
        # Under DP every device uploads weight 1: a sum that disagrees was not made by
        # `num_reporters` devices, and a wrong count would bias the adaptive clip.
        if round(weight) != num_reporters:
            raise ValueError(f"the summed weight {weight:g} is not the number of reporters {num_reporters} (DP)")
        sum_state = tuple(tf.constant(part, tf.float64) for part in parts)
        if self._config.kind is aggregation.AggregatorKind.DP_ADAPTIVE:
            count = round(unclipped)
            if not 0 <= count <= num_reporters:
                raise ValueError(f"the summed unclipped indicator {unclipped:g} is outside [0, {num_reporters}]")
            # QuantileEstimatorQuery's record is `indicator - 0.5`, summed over the reporters.
            centred = tf.constant(count - 0.5 * num_reporters, tf.float32)
            template = self._query.initial_sample_state(self._record_specs)
            sample_state = template._replace(sum_state=sum_state, quantile_estimator_state=centred)
        else:
            sample_state = sum_state
        result, new_state, event = self._query.get_noised_result(sample_state, state)
        result = aggregation.unscale_parts([part.numpy() for part in result], self._config.part_scale,
                                           upload.PER_DEVICE_PARTS)  # post-processing, as PartScaledFactory
        mean = tuple(np.asarray(value, np.float32) for value in result)
        return AggregateResult(mean, new_state, concrete_event(event))  # type: ignore[arg-type]  # one per part

    def _noised_by_devices(self, state: AggregatorState, parts: tuple[np.ndarray, ...], weight: float,
                           num_reporters: int) -> AggregateResult:
        """Distributed DP: the devices noised the sum already. Divided by the expected cohort (as
        DP-FedAvg's query divides), the ranking step unscaled (post-processing), and charged the
        planned Skellam round: the round has at least m reporters (its goal), so m shares or more
        of noise (`tff_pipeline.privacy.distributed`)."""
        assert self._distributed is not None
        if round(weight) != num_reporters:
            raise ValueError(f"the summed weight {weight:g} is not the number of reporters {num_reporters} (DP)")
        if num_reporters < self._distributed.noise_reporters:
            raise ValueError(f"{num_reporters} reporters carry less noise than the {self._distributed.noise_reporters} "
                             "each device's share was sized for; the round must not be released")
        denominator = float(self._config.expected_clients_per_round)
        result = aggregation.unscale_parts([part / denominator for part in parts], self._config.part_scale,
                                           upload.PER_DEVICE_PARTS)
        mean = tuple(np.asarray(value, np.float32) for value in result)
        event = ddp_accounting.round_event(self._distributed)
        return AggregateResult(mean, state, event)  # type: ignore[arg-type]  # one per part

    def state_to_arrays(self, state: AggregatorState) -> list[np.ndarray]:
        return [np.array(leaf) for leaf in tf.nest.flatten(state)]

    def state_from_arrays(self, arrays: Sequence[np.ndarray]) -> AggregatorState:
        """The state `state_to_arrays` saved; refuses arrays that do not fit this config's state."""
        template = self.initial_state()
        leaves = tf.nest.flatten(template)
        if len(arrays) != len(leaves):
            raise ValueError(f"an aggregator state has {len(leaves)} arrays, got {len(arrays)}")
        restored = []
        for index, (leaf, array) in enumerate(zip(leaves, arrays)):
            array = np.asarray(array)
            if array.shape != tuple(leaf.shape) or not np.all(np.isfinite(array)):
                raise ValueError(f"aggregator state array {index}: shape {array.shape} or values do not fit")
            restored.append(tf.constant(array, leaf.dtype))
        return tf.nest.pack_sequence_as(template, restored)


@dataclasses.dataclass(frozen=True, eq=False)
class ServerModel:
    """The global params (item embeddings [N, d], item bias [N], global mean []; float32) and the
    server optimizer's state. Immutable: `apply` returns the next model, so the caller persists
    it before it replaces the old one."""

    params: GlobalParams
    optimizer: process.ServerOptimizerConfig
    optimizer_state: OptimizerState

    @classmethod
    def create(cls, *, params: Sequence[np.ndarray], optimizer: process.ServerOptimizerConfig) -> ServerModel:
        checked = _checked_params(params)
        return cls(checked, optimizer, optimizer.build().initialize(_specs(checked)))

    @classmethod
    def restore(
        cls, *, params: Sequence[np.ndarray], optimizer: process.ServerOptimizerConfig,
        optimizer_arrays: Sequence[np.ndarray],
    ) -> ServerModel:
        """A model from saved arrays. The optimizer's hyperparameters come from `optimizer` (the
        operator's config wins over the saved ones); its accumulators and step from the arrays."""
        checked = _checked_params(params)
        built = optimizer.build()
        template = built.initialize(_specs(checked))
        leaves = tf.nest.flatten(template)
        if len(optimizer_arrays) != len(leaves):
            raise ValueError(
                f"the {optimizer.name} optimizer state has {len(leaves)} arrays, got {len(optimizer_arrays)}"
            )
        restored = [_restore_leaf(leaf, np.asarray(array), index) for index, (leaf, array)
                    in enumerate(zip(leaves, optimizer_arrays))]
        state = tf.nest.pack_sequence_as(template, restored)
        state = built.set_hparams(state, built.get_hparams(template))
        return cls(checked, optimizer, state)

    def optimizer_arrays(self) -> list[np.ndarray]:
        return [np.array(leaf) for leaf in tf.nest.flatten(self.optimizer_state)]

    def apply(self, mean_delta: Sequence[np.ndarray]) -> ServerModel:
        """One server step, as `process.build_delta_finalizer`: the ranking step (part 3) is added
        to the item embeddings' delta, the sum negated into a pseudo-gradient, the optimizer
        stepped. Unlike the finalizer, which silently keeps the old model on a non-finite
        update, this raises: the coordinator must know that a round it paid ε for was lost."""
        if len(mean_delta) not in (3, 4):
            raise ValueError(f"a mean delta has 3 or 4 parts, got {len(mean_delta)}")
        shapes = [p.shape for p in self.params] + [self.params[0].shape]
        deltas = []
        for index, part in enumerate(mean_delta):
            array = np.asarray(part, np.float32)
            if array.shape != shapes[index]:
                raise ValueError(f"mean delta part {index}: shape {array.shape}, expected {shapes[index]}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"mean delta part {index} holds non-finite values")
            deltas.append(tf.constant(array))
        gradients = process.pseudo_gradient(deltas)
        weights = tuple(tf.constant(p) for p in self.params)
        state, new_weights = self.optimizer.build().next(self.optimizer_state, weights, gradients)
        return ServerModel(_checked_params([w.numpy() for w in new_weights]), self.optimizer, state)


def _checked_params(params: Sequence[np.ndarray]) -> GlobalParams:
    if len(params) != 3:
        raise ValueError(f"the global params are 3 arrays, got {len(params)}")
    embeddings, bias, mean = (np.array(p, np.float32) for p in params)
    if embeddings.ndim != 2 or bias.shape != embeddings.shape[:1] or mean.shape != ():
        raise ValueError(f"global param shapes {embeddings.shape}, {bias.shape}, {mean.shape} do not fit "
                         "([N, d], [N], [])")
    for array in (embeddings, bias, mean):
        if not np.all(np.isfinite(array)):
            raise ValueError("the global params hold non-finite values")
        array.setflags(write=False)
    return embeddings, bias, mean


def _specs(params: GlobalParams) -> tuple[tf.TensorSpec, ...]:
    return tuple(tf.TensorSpec(p.shape, tf.float32) for p in params)


def _restore_leaf(leaf: Any, array: np.ndarray, index: int) -> Any:
    """One optimizer state leaf in the type of the template's (tensor, or Python number)."""
    if tf.is_tensor(leaf):
        if array.shape != tuple(leaf.shape):
            raise ValueError(f"optimizer state array {index}: shape {array.shape}, expected {tuple(leaf.shape)}")
        return tf.constant(array, leaf.dtype)
    if array.shape != ():
        raise ValueError(f"optimizer state array {index}: shape {array.shape}, expected a scalar")
    return type(leaf)(array.item())
