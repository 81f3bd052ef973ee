"""The FedAvg aggregator: example-weighted mean of client updates in one pass.

    mean = sum_k n_k * delta_k / sum_k n_k

`tff.aggregators.MeanFactory` computes the same value as map(multiply) at the clients, then a
sum, then a division: two executor calls per client. This factory expresses it as one
`tff.federated_aggregate` whose accumulate step multiplies and adds in the same TF call. On
ML-100K (943 clients per round, dense [1682, 17] updates) it measured 0.55-0.73 s per round
against 0.68-0.86 s for MeanFactory in the same run, with bit-identical results (a test checks
it against MeanFactory). A round with zero total weight returns zeros instead of NaN.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff


def mean_of_sums(sums: Sequence[Any], total_weight: tf.Tensor, devices: tf.Tensor,
                 per_device_parts: Collection[int]) -> list[Any]:
    """The mean from its sums: part k of `sums` (a tensor or a nest of them) divided by `devices`
    when k is in `per_device_parts`, else by `total_weight`; zeros where that is 0. TF ops, so one
    implementation serves the simulation's `report` step (in a TF computation) and the
    coordinator's mean of its secure sum (eagerly, `coordinator.server_aggregation`)."""
    return [
        tf.nest.map_structure(
            lambda s, k=k: tf.math.divide_no_nan(s, tf.cast(devices if k in per_device_parts else total_weight, s.dtype)),
            part,
        )
        for k, part in enumerate(sums)
    ]


def _stateless_aggregation(value_type: tff.Type, weight_type: tff.Type, zero: tff.Computation,
                           accumulate: tff.Computation, merge: tff.Computation,
                           report: tff.Computation) -> tff.templates.AggregationProcess:
    """A stateless, unmeasured weighted aggregation: one `federated_aggregate` of (value, weight)
    with these TF steps (what both mean factories are, around their own accumulators)."""

    @tff.federated_computation
    def initialize():
        return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        initialize.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
        tff.FederatedType(weight_type, tff.CLIENTS),
    )
    def next_fn(state, value, weight):
        mean = tff.federated_aggregate(tff.federated_zip((value, weight)), zero(), accumulate, merge, report)
        return tff.templates.MeasuredProcessOutput(
            state=state, result=mean, measurements=tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(initialize, next_fn)


class ExampleWeightedMeanFactory(tff.aggregators.WeightedAggregationFactory):
    """Weighted mean, stateless, no measurements: the non-private aggregator.

    The top-level parts of the value listed in `per_device_parts` are averaged per device
    (weight 1 each) instead of per example.
    """

    def __init__(self, *, per_device_parts: tuple[int, ...] = ()) -> None:
        self._per_device = frozenset(per_device_parts)

    def create(
        self, value_type: tff.Type, weight_type: tff.Type
    ) -> tff.templates.AggregationProcess:
        if not tff.types.is_structure_of_floats(value_type):
            raise TypeError(f"the weighted mean needs float tensors, got {value_type}")
        if not (isinstance(weight_type, tff.TensorType) and weight_type.shape in ((), [])):
            raise TypeError(f"the weight must be a float scalar, got {weight_type}")

        per_device = self._per_device
        if per_device and not isinstance(value_type, tff.StructType):
            raise TypeError("per-device parts need a structured value")

        def parts(structure):
            """(index, part) of the top-level parts of a value (a lone tensor is part 0)."""
            return list(enumerate(structure)) if isinstance(value_type, tff.StructType) else [(0, structure)]

        def rebuild(structure, new_parts):
            return type(structure)(new_parts) if isinstance(value_type, tff.StructType) else new_parts[0]

        @tff.tensorflow.computation
        def zero():
            sums = tff.types.structure_from_tensor_type_tree(
                lambda t: tf.zeros(t.shape, t.dtype), value_type
            )
            return sums, tf.zeros([], weight_type.dtype), tf.zeros([], weight_type.dtype)

        accumulator_type = zero.type_signature.result

        @tff.tensorflow.computation(accumulator_type, (value_type, weight_type))
        def accumulate(accumulator, value_and_weight):
            sums, total, devices = accumulator
            value, weight = value_and_weight
            # A TF copy of the devices' numpy weighting, `upload.UploadLayout.pack` (test_dp_aggregation ties them).
            new_parts = [
                tf.nest.map_structure(
                    lambda s, v, k=k: s + (v if k in per_device else tf.cast(weight, v.dtype) * v), part, v_part
                )
                for (k, part), (_, v_part) in zip(parts(sums), parts(value))
            ]
            return rebuild(sums, new_parts), total + weight, devices + 1.0

        @tff.tensorflow.computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return (tf.nest.map_structure(tf.add, first[0], second[0]), first[1] + second[1],
                    first[2] + second[2])

        @tff.tensorflow.computation(accumulator_type)
        def report(accumulator):
            sums, total, devices = accumulator
            return rebuild(sums, mean_of_sums([part for _, part in parts(sums)], total, devices, per_device))

        return _stateless_aggregation(value_type, weight_type, zero, accumulate, merge, report)


class GroupSumMeanFactory(tff.aggregators.WeightedAggregationFactory):
    """The plain mean of client groups' sums (`client_work.build_group_client_update`): each
    client's value is its parts already summed as `ExampleWeightedMeanFactory` sums one device's
    (example-weighted, or per device for `per_device_parts`) followed by its number of devices, and
    its weight is its example count. One federated sum of all of it, then `mean_of_sums`: the same
    mean as `ExampleWeightedMeanFactory` over the groups' users one by one. The result is the
    value's parts without the device count."""

    def __init__(self, *, per_device_parts: tuple[int, ...] = ()) -> None:
        self._per_device = frozenset(per_device_parts)

    def create(self, value_type: tff.Type, weight_type: tff.Type) -> tff.templates.AggregationProcess:
        if not (isinstance(value_type, tff.StructType) and len(value_type) >= 2
                and tff.types.is_structure_of_floats(value_type)):
            raise TypeError(f"a group's value is float parts and a device count, got {value_type}")
        if not (isinstance(weight_type, tff.TensorType) and weight_type.shape in ((), [])):
            raise TypeError(f"the weight must be a float scalar, got {weight_type}")
        per_device = self._per_device

        @tff.tensorflow.computation
        def zero():
            sums = tff.types.structure_from_tensor_type_tree(lambda t: tf.zeros(t.shape, t.dtype), value_type)
            return tuple(sums), tf.zeros([], weight_type.dtype)

        accumulator_type = zero.type_signature.result

        @tff.tensorflow.computation(accumulator_type, (value_type, weight_type))
        def accumulate(accumulator, value_and_weight):
            sums, total = accumulator
            value, weight = value_and_weight
            return tf.nest.map_structure(tf.add, sums, tuple(value)), total + weight

        @tff.tensorflow.computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return tf.nest.map_structure(tf.add, first[0], second[0]), first[1] + second[1]

        @tff.tensorflow.computation(accumulator_type)
        def report(accumulator):
            sums, total = accumulator
            return tuple(mean_of_sums(list(sums[:-1]), total, sums[-1], per_device))

        return _stateless_aggregation(value_type, weight_type, zero, accumulate, merge, report)
