"""Builder of the federated learning process (one builder, parts composed; TFF style).

    server state --broadcast--> clients --client work--> (delta, n) --aggregator--> mean delta
         ^                                                                              |
         +------ finalizer (server optimizer on the pseudo-gradient -mean delta) <------+

Only the global item parameters are in the state; user parameters exist only inside the
client work computation.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from protocol import updates, upload
from tff_pipeline import model
from tff_pipeline.federated import aggregation, client_work
from tff_pipeline.federated.weighted_mean import GroupSumMeanFactory


@dataclasses.dataclass(frozen=True)
class ServerOptimizerConfig:
    name: str = "sgdm"  # "sgdm" | "adam"
    learning_rate: float = 1.0
    momentum: float = 0.9
    # Adam's epsilon: larger values damp coordinates whose updates are tiny (rarely rated items),
    # which acts as shrinkage for them.
    adam_epsilon: float = 1e-7

    def build(self) -> tff.learning.optimizers.Optimizer:
        if self.name == "sgdm":
            return tff.learning.optimizers.build_sgdm(self.learning_rate, momentum=self.momentum or None)
        if self.name == "adam":
            return tff.learning.optimizers.build_adam(
                self.learning_rate, beta_1=self.momentum, epsilon=self.adam_epsilon
            )
        raise ValueError(f"unknown server optimizer {self.name!r} (expected 'sgdm' or 'adam')")


def build_fedrec_process(
    config: model.ModelConfig,
    *,
    aggregator: aggregation.AggregatorConfig,
    server_optimizer: ServerOptimizerConfig,
    seed: int,
    canaries: bool = False,
    grouped: bool = False,
) -> tff.learning.templates.LearningProcess:
    """FedRecon-style federated MF: reconstruct user params locally, aggregate item deltas.
    `canaries`: some clients may be the privacy audit's canaries (`client_work`).
    `grouped`: each TFF client is a group of users (`client_work.group_data`), its users' work
    vectorized in one TF computation; the round's result is the per-user one up to float order.
    Under central DP a group hands the aggregator each user's update, clipped user by user there
    (`aggregation.PerUserRecordsQuery`); distributed DP is refused (every device noises its own)."""
    if grouped and canaries:
        raise ValueError("the privacy audit's canaries are single clients: run it with one user per client")
    weights_type = client_work.global_weights_type(config)
    initial = model.initial_global_params(config, seed=seed)
    initial_numpy = tuple(t.numpy() for t in initial)

    @tff.tensorflow.computation
    def initial_weights():
        return tff.learning.models.ModelWeights(
            trainable=tuple(tf.constant(x) for x in initial_numpy), non_trainable=()
        )

    uploaded = client_work.update_type(config)
    per_device_parts = upload.PER_DEVICE_PARTS if config.implicit else ()
    if grouped and aggregator.is_private:
        work = client_work.build_group_client_work(config, per_user=True)
        aggregation_process = aggregation.build_aggregator(
            aggregator, per_device_parts=per_device_parts, grouped=True).create(
            client_work.per_user_update_type(config), tff.TensorType(np.float32))
    elif grouped:
        work = client_work.build_group_client_work(config)
        aggregation_process = GroupSumMeanFactory(per_device_parts=per_device_parts).create(
            client_work.group_update_type(config), tff.TensorType(np.float32))
    else:
        work = client_work.build_client_work(config, canaries=canaries)
        aggregation_process = aggregation.build_aggregator(aggregator, per_device_parts=per_device_parts).create(
            uploaded, tff.TensorType(np.float32))
    return compose_process(
        initial_weights=initial_weights,
        distributor=tff.learning.templates.build_broadcast_process(weights_type),
        client_work=work,
        aggregator=aggregation_process,
        finalizer=build_delta_finalizer(server_optimizer.build(), weights_type, uploaded),
    )


def build_delta_finalizer(
    optimizer: tff.learning.optimizers.Optimizer, weights_type: tff.Type, uploaded_type: tff.Type
) -> tff.learning.templates.FinalizerProcess:
    """TFF's apply-optimizer finalizer, fed the aggregated model delta (new - old).

    Clients upload deltas (`protocol.updates`); TFF's optimizers step against a pseudo-gradient.
    This is the one place where the server converts the one into the other, adding the ranking
    head's step of the item table (a fourth uploaded tensor, when present) to the rating head's.
    """
    inner = tff.learning.templates.build_apply_optimizer_finalizer(optimizer, weights_type)
    state_type, model_weights_type, gradient_type = inner.next.type_signature.parameter

    @tff.tensorflow.computation(uploaded_type)
    def to_pseudo_gradient(mean_delta):
        return pseudo_gradient(mean_delta)

    @tff.federated_computation(state_type, model_weights_type, tff.FederatedType(uploaded_type, tff.SERVER))
    def next_fn(state, weights, mean_delta):
        return inner.next(state, weights, tff.federated_map(to_pseudo_gradient, mean_delta))

    return tff.learning.templates.FinalizerProcess(
        inner.initialize, next_fn, get_hparams_fn=inner.get_hparams, set_hparams_fn=inner.set_hparams
    )


def pseudo_gradient(mean_delta: Sequence[Any]) -> tuple[Any, Any, Any]:
    """What the server optimizer steps against, from the mean delta of the uploaded parts (TF
    tensors, in a TF computation or eagerly): the ranking head's step of the item table (a fourth
    part, when present) added to the rating head's, and the sum negated (`protocol.updates`). The
    simulation's finalizer and the coordinator's `ServerModel.apply` both call it."""
    embeddings, bias, mean = mean_delta[0], mean_delta[1], mean_delta[2]
    if len(mean_delta) == 4:
        embeddings = embeddings + mean_delta[3]
    return updates.pseudo_gradient(embeddings), updates.pseudo_gradient(bias), updates.pseudo_gradient(mean)


def compose_process(
    *,
    initial_weights: tff.Computation,
    distributor: tff.templates.MeasuredProcess,
    client_work: tff.Computation,
    aggregator: tff.templates.AggregationProcess,
    finalizer: tff.templates.MeasuredProcess,
) -> tff.learning.templates.LearningProcess:
    """Compose the parts into a LearningProcess (as `compose_learning_process` does, but with
    a stateless client work over tensor client data; see `client_work.py` for why)."""
    client_data_type = client_work.type_signature.parameter[1]
    empty_state = lambda: tff.federated_value((), tff.SERVER)  # noqa: E731 - TFF traces a callable; a def reads worse

    @tff.federated_computation
    def init_fn():
        return tff.federated_zip(
            tff.learning.templates.LearningAlgorithmState(
                global_model_weights=tff.federated_eval(initial_weights, tff.SERVER),
                distributor=distributor.initialize(),
                client_work=empty_state(),
                aggregator=aggregator.initialize(),
                finalizer=finalizer.initialize(),
            )
        )

    @tff.federated_computation(init_fn.type_signature.result, client_data_type)
    def next_fn(state, client_data):
        distributed = distributor.next(state.distributor, state.global_model_weights)
        results = client_work(distributed.result, client_data)
        aggregated = aggregator.next(state.aggregator, results.update, results.update_weight)
        finalized = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
        new_state = tff.federated_zip(
            tff.learning.templates.LearningAlgorithmState(
                global_model_weights=finalized.result,
                distributor=distributed.state,
                client_work=empty_state(),
                aggregator=aggregated.state,
                finalizer=finalized.state,
            )
        )
        metrics = tff.federated_zip(
            collections.OrderedDict(
                distributor=distributed.measurements,
                client_work=empty_state(),
                aggregator=aggregated.measurements,
                finalizer=finalized.measurements,
            )
        )
        return tff.learning.templates.LearningProcessOutput(new_state, metrics)

    state_type = next_fn.type_signature.parameter[0].member

    @tff.tensorflow.computation(state_type)
    def get_model_weights(state):
        return state.global_model_weights

    @tff.tensorflow.computation(state_type, state_type.global_model_weights)
    def set_model_weights(state, weights):
        return tff.learning.templates.LearningAlgorithmState(
            global_model_weights=weights,
            distributor=state.distributor,
            client_work=state.client_work,
            aggregator=state.aggregator,
            finalizer=state.finalizer,
        )

    return tff.learning.templates.LearningProcess(init_fn, next_fn, get_model_weights, set_model_weights)
