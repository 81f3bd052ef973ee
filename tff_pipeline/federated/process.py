"""Builder of the federated learning process (one builder, parts composed; TFF style).

    server state --broadcast--> clients --client work--> (delta, n) --aggregator--> mean delta
         ^                                                                              |
         +-------------------------- finalizer (server optimizer) <--------------------+

Only the global item parameters are in the state; user parameters exist only inside the
client work computation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_pipeline import model
from tff_pipeline.federated import aggregation, client_work


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
) -> tff.learning.templates.LearningProcess:
    """FedRecon-style federated MF: reconstruct user params locally, aggregate item deltas."""
    weights_type = client_work.global_weights_type(config)
    initial = model.initial_global_params(config, seed=seed)
    initial_numpy = tuple(t.numpy() for t in initial)

    @tff.tensorflow.computation
    def initial_weights():
        return tff.learning.models.ModelWeights(
            trainable=tuple(tf.constant(x) for x in initial_numpy), non_trainable=()
        )

    factory = aggregation.build_aggregator(aggregator)
    update_type = weights_type.trainable
    return tff.learning.templates.compose_learning_process(
        initial_model_weights_fn=initial_weights,
        model_weights_distributor=tff.learning.templates.build_broadcast_process(weights_type),
        client_work=client_work.build_client_work(config),
        model_update_aggregator=factory.create(update_type, tff.TensorType(np.float32)),
        model_finalizer=tff.learning.templates.build_apply_optimizer_finalizer(
            server_optimizer.build(), weights_type
        ),
    )
