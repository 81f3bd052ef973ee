"""Client work: what a device computes in one round, as TFF computations.

Input: the broadcast global weights and the device's ratings (one struct of two tensors: every
rating the device holds; the local work is full-batch). Output: the delta of the global weights
and the example count (the FedAvg weight). The user's own parameters are reconstructed inside
the TF computation and dropped there: they are not part of the computation's result type, so
nothing downstream (aggregator, server) can ever see them.

Client data are tensors rather than `tf.data` sequences: measured on ML-100K, a round over all
943 clients took 1.24-1.30 s with per-client datasets and 0.66 s with tensors, the difference
being TFF's per-client dataset serialization. (This is also why the process is composed in
`process.py` rather than by `compose_learning_process`, whose ClientWorkProcess requires
sequences.)
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import model

CLIENT_DATA_TYPE = tff.types.to_type(
    collections.OrderedDict(
        item_ids=tff.TensorType(np.int32, [None]), ratings=tff.TensorType(np.float32, [None])
    )
)


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


def update_type(config: model.ModelConfig) -> tff.Type:
    """What a device uploads: the rating head's three deltas, plus the ranking head's delta of
    the item table when that head is on."""
    trainable = global_weights_type(config).trainable
    return tff.types.to_type(tuple(trainable) + ((trainable[0],) if config.implicit else ()))


def build_client_update(config: model.ModelConfig, *, canaries: bool = False) -> tff.Computation:
    """TF computation: (global weights, device ratings) -> ClientResult(update, example count).

    With `canaries` (the privacy audit, `tff_pipeline.audit`), a client whose item ids are negative
    is a canary: its "ratings" are a fixed update vector (`canary_data`), uploaded as it is with
    weight 1 and clipped by the aggregator like everyone's."""

    def user_update(weights, data):
        output = model.client_update(
            model.GlobalParams(*weights.trainable), data["item_ids"], data["ratings"], config
        )
        # The upload is the model delta, new - old (protocol.updates), as on a real device; the
        # server turns the aggregate into its optimizer's pseudo-gradient. With the ranking head
        # on, its step on the item table travels as a fourth tensor (it is averaged per device,
        # not per rating, and added to the rating head's step on the server).
        update = tuple(output.delta) + ((output.implicit_delta,) if config.implicit else ())
        return update, output.num_examples

    def canary_update(weights, data):
        shapes = [tensor.shape for tensor in weights.trainable] + ([weights.trainable[0].shape] if config.implicit else [])
        sizes = [int(np.prod(shape)) for shape in shapes]
        pieces = tf.split(data["ratings"], sizes)
        return tuple(tf.reshape(piece, shape) for piece, shape in zip(pieces, shapes)), tf.constant(1.0)

    @tff.tensorflow.computation(global_weights_type(config), CLIENT_DATA_TYPE)
    def client_update(weights, data):
        if canaries:
            update, weight = tf.cond(tf.reduce_any(data["item_ids"] < 0), lambda: canary_update(weights, data),
                                     lambda: user_update(weights, data))
        else:
            update, weight = user_update(weights, data)
        return tff.learning.templates.ClientResult(update=update, update_weight=weight)

    return client_update


def build_client_work(config: model.ModelConfig, *, canaries: bool = False) -> tff.Computation:
    """Federated computation: weights@CLIENTS, data@CLIENTS -> ClientResult@CLIENTS.

    No client-side metrics: under user-level DP every released statistic would need noise.
    """
    client_update = build_client_update(config, canaries=canaries)

    @tff.federated_computation(
        tff.FederatedType(global_weights_type(config), tff.CLIENTS),
        tff.FederatedType(CLIENT_DATA_TYPE, tff.CLIENTS),
    )
    def client_work(weights, client_data):
        return tff.federated_map(client_update, (weights, client_data))

    return client_work


def canary_data(update: np.ndarray) -> collections.OrderedDict:
    """A canary client's data: the flat update it uploads every round it is sampled."""
    return client_data(np.array([-1], np.int32), np.asarray(update, np.float32))


def client_data(item_ids, ratings) -> collections.OrderedDict:
    """One device's ratings in the form the client work consumes."""
    return collections.OrderedDict(
        item_ids=np.asarray(item_ids, np.int32), ratings=np.asarray(ratings, np.float32)
    )
