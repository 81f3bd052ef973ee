"""Model-update aggregators: plain example-weighted mean, or DP with fixed/adaptive clipping.

DP aggregators are *unweighted*: bounded per-user sensitivity requires that no device's weight
depend on its data size, so under DP each device's clipped delta counts once (DP-FedAvg,
McMahan et al. 2018) and the sum is divided by the expected cohort size. The plain mean is the
FedAvg formula, weighted by example count (`weighted_mean.py`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp

from protocol.distributed_dp import MECHANISM
from tff_pipeline.federated.weighted_mean import ExampleWeightedMeanFactory


class AggregatorKind(str, enum.Enum):
    MEAN = "none"
    DP_FIXED = "fixed"
    DP_ADAPTIVE = "adaptive"
    DP_DISTRIBUTED = "distributed"


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
    kind: AggregatorKind = AggregatorKind.MEAN
    noise_multiplier: float = 0.0
    clip: float = 0.5  # fixed clip, or the initial clip when adaptive
    expected_clients_per_round: float = 10.0
    target_unclipped_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    # Under DP: the per-device parts (the ranking head's step) are multiplied by `part_scale`
    # before clipping and divided by it after the noised sum (`PartScaledFactory`).
    part_scale: float = 1.0
    # Distributed DP: the secure sum's bit width and m of the noise rule (`privacy.distributed`).
    bits: int = 20
    noise_reporters: int | None = None

    @property
    def is_private(self) -> bool:
        return self.kind is not AggregatorKind.MEAN


class PartScaledFactory(tff.aggregators.UnweightedAggregationFactory):
    """Wraps a (DP) factory: multiplies some uploaded tensors by `scale` on the clients before the
    inner aggregation and divides the aggregate by it afterwards.

    Why: DP clips each device's whole update to one norm and adds noise of that norm's scale to
    every coordinate. The ranking head's step is dense over all items and dominates the norm, so
    the adaptive clip grows with it and the noise on the rating head's item biases grows too.
    Scaling the step down gives it a smaller share of the clip (less noise on the biases) and
    more noise on itself after the division. The rescaling is post-processing of the noised
    sum: the privacy guarantee is the inner factory's, unchanged. `denominator` divides the result
    too: distributed DP's factory is a sum, DP-FedAvg divides it by the expected cohort.
    """

    def __init__(self, inner: tff.aggregators.UnweightedAggregationFactory, *, parts: tuple[int, ...], scale: float,
                 denominator: float = 1.0):
        if not scale > 0 or not denominator > 0:
            raise ValueError(f"the part scale and denominator must be > 0, got {scale}, {denominator}")
        self._inner, self._parts, self._scale, self._denominator = inner, parts, scale, denominator

    def create(self, value_type: tff.Type) -> tff.templates.AggregationProcess:
        inner = self._inner.create(value_type)
        parts, scale, denominator = self._parts, self._scale, self._denominator

        @tff.tensorflow.computation(value_type)
        def shrink(value):
            return scale_parts(value, scale, parts)

        @tff.tensorflow.computation(inner.next.type_signature.result.result.member)
        def grow(value):
            return tuple(t / denominator for t in unscale_parts(value, scale, parts))

        state_type = inner.next.type_signature.parameter[0]

        @tff.federated_computation(state_type, tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            output = inner.next(state, tff.federated_map(shrink, value))
            return tff.templates.MeasuredProcessOutput(
                state=output.state, result=tff.federated_map(grow, output.result), measurements=output.measurements
            )

        return tff.templates.AggregationProcess(inner.initialize, next_fn)


def scale_parts(value: Sequence[Any], factor: float, parts: Sequence[int]) -> tuple[Any, ...]:
    """`value` with its parts at the indices `parts` multiplied by `factor` (numpy arrays or TF
    tensors, in a TF computation too): the devices' side of `PartScaledFactory`."""
    return tuple(t * factor if index in parts else t for index, t in enumerate(value))


def unscale_parts(value: Sequence[Any], scale: float, parts: Sequence[int]) -> tuple[Any, ...]:
    """The server's side of `PartScaledFactory`: the noised aggregate of parts scaled by `scale`
    back to their own scale (post-processing). Used by the simulation's factory and by the
    coordinator on its noised sum (`coordinator.server_aggregation`)."""
    return scale_parts(value, 1.0 / scale, parts)


def adaptive_clipped_count_stddev(config: AggregatorConfig) -> float:
    """The stddev of the noise on the adaptive clip's clipped count (summed, before division).

    The clipped-count estimate is noised too and TFF charges that noise to the total noise
    multiplier z: the update noise becomes (z^-2 - (2 s)^-2)^-1/2 for count stddev s, and
    z >= 2 s is refused. TFF's default s = 0.05 * cohort breaks for small cohorts; s >= z keeps
    the update noise within 1.16 z.
    """
    return max(0.05 * config.expected_clients_per_round, config.noise_multiplier)


def dp_query(config: AggregatorConfig) -> tfp.NormalizedQuery:
    """The tensorflow_privacy query of a private config: the query the simulation's TFF factory
    applies (`build_dp_factory`) and the coordinator applies to its secure sum
    (`coordinator.server_aggregation`).

    Built as TFF 0.87's presets build theirs (`DifferentiallyPrivateFactory.gaussian_fixed` and
    `gaussian_adaptive`, including `adaptive_clip_noise_params`' split of z between the update and
    the clipped count), with the clipped count's stddev of `adaptive_clipped_count_stddev`;
    tests/coordinator/test_dp_aggregation.py checks it against those presets.
    """
    if config.kind not in (AggregatorKind.DP_FIXED, AggregatorKind.DP_ADAPTIVE):
        raise ValueError("a central DP query needs a central DP aggregator kind (fixed or adaptive)")
    if config.noise_multiplier < 0 or config.clip <= 0:
        raise ValueError("DP aggregation needs noise_multiplier >= 0 and clip > 0")
    clients = float(config.expected_clients_per_round)
    if not clients > 0:
        raise ValueError(f"DP aggregation needs expected clients > 0, got {clients}")
    z, clip = float(config.noise_multiplier), float(config.clip)
    if config.kind is AggregatorKind.DP_FIXED:
        return tfp.NormalizedQuery(tfp.GaussianSumQuery(l2_norm_clip=clip, stddev=clip * z), denominator=clients)
    count_stddev = float(adaptive_clipped_count_stddev(config))
    if z > 0:
        if z >= 2 * count_stddev:
            raise ValueError(f"the clipped count's noise stddev {count_stddev} is too low for noise multiplier {z}")
        update_noise_multiplier = (z**-2 - (2 * count_stddev) ** -2) ** -0.5
    else:
        update_noise_multiplier = 0.0
    query = tfp.QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=clip,
        noise_multiplier=update_noise_multiplier,
        target_unclipped_quantile=float(config.target_unclipped_quantile),
        learning_rate=float(config.clip_learning_rate),
        clipped_count_stddev=count_stddev,
        expected_num_records=clients,
        geometric_update=True,
    )
    return tfp.NormalizedQuery(query, denominator=clients)


def build_dp_factory(config: AggregatorConfig) -> tff.aggregators.DifferentiallyPrivateFactory:
    """TFF's DP factory over `dp_query(config)`, unweighted and without part scaling (the
    simulation's `build_aggregator` adds those)."""
    return tff.aggregators.DifferentiallyPrivateFactory(dp_query(config))


def build_distributed_dp_factory(config: AggregatorConfig) -> tff.aggregators.UnweightedAggregationFactory:
    """TFF's `DistributedDpSumFactory` with the mechanism and parameters of the devices' encoding
    (`protocol.distributed_dp`): Skellam, DFT rotation, unconditional stochastic rounding, a fixed
    clip, and noise shares for m = `noise_reporters` devices (TFF calls m its expected clients)."""
    from tensorflow_federated.python.aggregators.distributed_dp import DistributedDpSumFactory

    if config.noise_reporters is None:
        raise ValueError("distributed DP needs the number of reporters its noise shares are for")
    return DistributedDpSumFactory(
        noise_multiplier=float(config.noise_multiplier), expected_clients_per_round=int(config.noise_reporters),
        bits=int(config.bits), l2_clip=float(config.clip), mechanism=MECHANISM, rotation_type="dft", beta=0.0)


class PerUserRecordsQuery(tfp.SumAggregationDPQuery):
    """A DP query over client groups: a client's value is its users' updates stacked on a leading
    axis (`model.client_updates_per_user`), and its record is the sum over its users of `inner`'s
    record of each user's own update (`preprocess_record` user by user: clipping to the clip norm
    and, adaptive, the unclipped indicator). Records are summed anyway (TFF's
    `DifferentiallyPrivateFactory` sums the clients' records, then `get_noised_result` noises the
    sum), so the noised result, the new clip and the DP event are `inner`'s over the same users,
    whichever client holds them: user-level DP and its accounting are unchanged."""

    def __init__(self, inner: tfp.DPQuery) -> None:
        self._inner = inner

    def initial_global_state(self):
        return self._inner.initial_global_state()

    def derive_sample_params(self, global_state):
        return self._inner.derive_sample_params(global_state)

    def initial_sample_state(self, template=None):
        return self._inner.initial_sample_state(tf.nest.map_structure(
            lambda spec: tf.TensorSpec(spec.shape[1:], spec.dtype), template))

    def preprocess_record(self, params, record):
        users = tf.shape(tf.nest.flatten(record)[0])[0]

        def user_record(u):
            return self._inner.preprocess_record(params, tf.nest.map_structure(lambda t: t[u], record))

        # The record structure of one user, zeroed (a group may be empty only in its shape's terms).
        zero = tf.nest.map_structure(tf.zeros_like, self._inner.preprocess_record(
            params, tf.nest.map_structure(lambda t: tf.zeros(tf.shape(t)[1:], t.dtype), record)))
        _, total = tf.while_loop(
            lambda u, _: u < users,
            lambda u, acc: (u + 1, tf.nest.map_structure(tf.add, acc, user_record(u))),
            (tf.constant(0), zero))
        return total

    def get_noised_result(self, sample_state, global_state):
        return self._inner.get_noised_result(sample_state, global_state)

    def derive_metrics(self, global_state):
        return self._inner.derive_metrics(global_state)


def build_aggregator(
    config: AggregatorConfig, *, per_device_parts: tuple[int, ...] = (), grouped: bool = False
) -> tff.aggregators.WeightedAggregationFactory:
    """The weighted aggregation factory the learning process composes. `per_device_parts` are
    the indices of uploaded tensors that the plain mean averages per device rather than per
    example (the ranking head's step: a device's implicit loss is one per device, whatever its
    number of ratings; weighting it by ratings measured worse, HR@10 0.636 against 0.662).
    Under DP every part counts once per device anyway; there they are scaled by `part_scale`.
    `grouped` (central DP only): the clients are groups whose values stack their users' updates
    (`PerUserRecordsQuery`)."""
    if config.kind is AggregatorKind.MEAN:
        if grouped:
            raise ValueError("the plain mean of client groups is GroupSumMeanFactory")
        return ExampleWeightedMeanFactory(per_device_parts=per_device_parts)
    if config.kind is AggregatorKind.DP_DISTRIBUTED:
        if grouped:
            raise ValueError("distributed DP runs one user per client (each device adds its own noise share)")
        return tff.aggregators.as_weighted_aggregator(PartScaledFactory(
            build_distributed_dp_factory(config), parts=per_device_parts, scale=config.part_scale,
            denominator=float(config.expected_clients_per_round)))
    factory: tff.aggregators.UnweightedAggregationFactory = (
        tff.aggregators.DifferentiallyPrivateFactory(PerUserRecordsQuery(dp_query(config))) if grouped
        else build_dp_factory(config))
    if per_device_parts and config.part_scale != 1.0:
        factory = PartScaledFactory(factory, parts=per_device_parts, scale=config.part_scale)
    return tff.aggregators.as_weighted_aggregator(factory)
