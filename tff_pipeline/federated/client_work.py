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


# A client group: several users' ratings, flat, with each rating's user (0..num_users-1) in
# `user_index` (`group_data`).
GROUP_DATA_TYPE = tff.types.to_type(
    collections.OrderedDict(
        item_ids=tff.TensorType(np.int32, [None]), ratings=tff.TensorType(np.float32, [None]),
        user_index=tff.TensorType(np.int32, [None]), num_users=tff.TensorType(np.int32, []),
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


def group_update_type(config: model.ModelConfig) -> tff.Type:
    """What a client group uploads (`build_group_client_update`): the sums of `update_type`'s parts
    as the plain mean weights them, then the group's number of users (devices)."""
    return tff.types.to_type(tuple(update_type(config)) + (tff.TensorType(np.float32),))


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
    return _at_clients(build_client_update(config, canaries=canaries), config, CLIENT_DATA_TYPE)


def _at_clients(client_update: tff.Computation, config: model.ModelConfig, data_type: tff.Type) -> tff.Computation:
    """`client_update` mapped over the clients: weights@CLIENTS, data@CLIENTS -> ClientResult@CLIENTS."""

    @tff.federated_computation(
        tff.FederatedType(global_weights_type(config), tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def client_work(weights, client_data):
        return tff.federated_map(client_update, (weights, client_data))

    return client_work


def per_user_update_type(config: model.ModelConfig) -> tff.Type:
    """What a client group hands a DP aggregator: `update_type`'s parts of each of its users,
    stacked on a leading axis (`build_group_client_update(config, per_user=True)`)."""
    return tff.types.to_type(tuple(tff.TensorType(np.float32, [None, *t.shape]) for t in update_type(config)))


def build_group_client_update(config: model.ModelConfig, *, per_user: bool = False) -> tff.Computation:
    """TF computation: (global weights, a group's ratings) -> ClientResult, several users in one TFF
    client, their work vectorized.

    Plain (`model.client_update_group`): the update is sum_u n_u delta_u for the rating head's
    parts, sum_u delta_u for the ranking head's (averaged per device), then the number of users;
    the weight is sum_u n_u. The plain mean of these sums (`weighted_mean.GroupSumMeanFactory`) is
    the per-user path's FedAvg mean, up to float summation order; nothing per user leaves the
    computation. `per_user` (for central DP, which clips user by user in the aggregator,
    `aggregation.PerUserRecordsQuery`): every user's own update stacked
    (`model.client_updates_per_user`), weighted by the number of users; they stay at the client
    placement, as each device's own update does on the per-user path."""

    @tff.tensorflow.computation(global_weights_type(config), GROUP_DATA_TYPE)
    def group_update(weights, data):
        args = (model.GlobalParams(*weights.trainable), data["item_ids"], data["ratings"], data["user_index"],
                data["num_users"], config)
        if per_user:
            return tff.learning.templates.ClientResult(update=model.client_updates_per_user(*args),
                                                       update_weight=tf.cast(data["num_users"], tf.float32))
        output = model.client_update_group(*args)
        update = tuple(output.weighted_delta) + ((output.implicit_delta,) if config.implicit else ())
        return tff.learning.templates.ClientResult(update=update + (output.num_users,),
                                                   update_weight=output.num_examples)

    return group_update


def build_group_client_work(config: model.ModelConfig, *, per_user: bool = False) -> tff.Computation:
    """`build_client_work` over client groups (`GROUP_DATA_TYPE`); `per_user`: each user's update
    stacked (for DP), else the plain mean's sums."""
    return _at_clients(build_group_client_update(config, per_user=per_user), config, GROUP_DATA_TYPE)


def group_data(users: list[collections.OrderedDict]) -> collections.OrderedDict:
    """Several users' `client_data` as one client group: their ratings concatenated, each rating's
    position in `users` as its `user_index`."""
    items = [np.asarray(u["item_ids"], np.int32) for u in users]
    ratings = [np.asarray(u["ratings"], np.float32) for u in users]
    return collections.OrderedDict(
        item_ids=np.concatenate(items) if users else np.zeros([0], np.int32),
        ratings=np.concatenate(ratings) if users else np.zeros([0], np.float32),
        user_index=np.repeat(np.arange(len(users), dtype=np.int32), [len(r) for r in ratings]).astype(np.int32),
        num_users=np.int32(len(users)),
    )


def canary_data(update: np.ndarray) -> collections.OrderedDict:
    """A canary client's data: the flat update it uploads every round it is sampled."""
    return client_data(np.array([-1], np.int32), np.asarray(update, np.float32))


def client_data(item_ids, ratings) -> collections.OrderedDict:
    """One device's ratings in the form the client work consumes."""
    return collections.OrderedDict(
        item_ids=np.asarray(item_ids, np.int32), ratings=np.asarray(ratings, np.float32)
    )
