"""Client work: what a device computes in one round, as a `tff.learning` ClientWorkProcess.

Input: the broadcast global weights and the device's dataset (a sequence of rating batches).
Output: the delta of the global weights and the example count (the FedAvg weight). The user's own
parameters are reconstructed inside the TF computation and dropped there: they are not part of
the computation's result type, so nothing downstream (aggregator, server) can ever see them.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import model

# Single batch large enough to hold any user's ratings: client work runs full-batch.
_ALL_RATINGS = 1 << 30

RATINGS_ELEMENT_TYPE = tff.types.to_type(
    collections.OrderedDict(
        item_ids=tff.TensorType(np.int32, [None]), ratings=tff.TensorType(np.float32, [None])
    )
)
CLIENT_DATA_TYPE = tff.SequenceType(RATINGS_ELEMENT_TYPE)


def global_weights_type(config: model.ModelConfig) -> tff.Type:
    """`ModelWeights` type of the shared parameters (trainable: embeddings, biases, mean)."""
    return tff.types.to_type(
        tff.learning.models.ModelWeights(
            trainable=(
                tff.TensorType(np.float32, [config.num_items, config.dim]),
                tff.TensorType(np.float32, [config.num_items]),
                tff.TensorType(np.float32, []),
            ),
            non_trainable=(),
        )
    )


def _as_params(trainable) -> model.GlobalParams:
    return model.GlobalParams(*trainable)


def build_client_update(config: model.ModelConfig) -> tff.Computation:
    """TF computation: (global weights, dataset) -> ClientResult(delta, example count)."""

    @tff.tensorflow.computation(global_weights_type(config), CLIENT_DATA_TYPE)
    def client_update(weights, dataset):
        batch = dataset.unbatch().batch(_ALL_RATINGS).get_single_element()
        output = model.client_update(
            _as_params(weights.trainable), batch["item_ids"], batch["ratings"], config
        )
        # TFF convention: the update is a pseudo-gradient (old - new), which the server
        # optimizer then subtracts.
        return tff.learning.templates.ClientResult(
            update=tuple(-d for d in output.delta), update_weight=output.num_examples
        )

    return client_update


def build_client_work(config: model.ModelConfig) -> tff.learning.templates.ClientWorkProcess:
    """Stateless client work process around `build_client_update`."""
    client_update = build_client_update(config)
    weights_type = global_weights_type(config)

    @tff.federated_computation
    def initialize():
        return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(
        tff.FederatedType((), tff.SERVER),
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(CLIENT_DATA_TYPE, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        results = tff.federated_map(client_update, (weights, client_data))
        # No client-side metrics: under user-level DP every released statistic would need noise.
        measurements = tff.federated_value((), tff.SERVER)
        return tff.templates.MeasuredProcessOutput(state, results, measurements)

    return tff.learning.templates.ClientWorkProcess(initialize, next_fn)


def client_dataset(item_ids, ratings) -> tf.data.Dataset:
    """One device's ratings as the dataset the client work consumes."""
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(
            item_ids=tf.constant(item_ids, tf.int32), ratings=tf.constant(ratings, tf.float32)
        )
    ).batch(_ALL_RATINGS)
