"""Model-update aggregators: plain example-weighted mean, or DP with fixed/adaptive clipping.

DP aggregators are *unweighted*: bounded per-user sensitivity requires that no device's weight
depend on its data size, so under DP each device's clipped delta counts once (DP-FedAvg,
McMahan et al. 2018) and the sum is divided by the expected cohort size. The plain mean is the
FedAvg formula, weighted by example count (`weighted_mean.py`).
"""

from __future__ import annotations

import dataclasses
import enum

import tensorflow_federated as tff

from tff_pipeline.federated.weighted_mean import ExampleWeightedMeanFactory


class AggregatorKind(str, enum.Enum):
    MEAN = "none"
    DP_FIXED = "fixed"
    DP_ADAPTIVE = "adaptive"


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
    kind: AggregatorKind = AggregatorKind.MEAN
    noise_multiplier: float = 0.0
    clip: float = 0.5  # fixed clip, or the initial clip when adaptive
    expected_clients_per_round: float = 10.0
    target_unclipped_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    @property
    def is_private(self) -> bool:
        return self.kind is not AggregatorKind.MEAN


def build_aggregator(
    config: AggregatorConfig, *, per_device_parts: tuple[int, ...] = ()
) -> tff.aggregators.WeightedAggregationFactory:
    """The weighted aggregation factory the learning process composes. `per_device_parts` are
    the indices of uploaded tensors that the plain mean averages per device rather than per
    example (the ranking head's step: a device's implicit loss is one per device, whatever its
    number of ratings; weighting it by ratings measured worse, HR@10 0.636 against 0.662)."""
    if config.kind is AggregatorKind.MEAN:
        return ExampleWeightedMeanFactory(per_device_parts=per_device_parts)
    if config.noise_multiplier < 0 or config.clip <= 0:
        raise ValueError("DP aggregation needs noise_multiplier >= 0 and clip > 0")
    clients = config.expected_clients_per_round
    if config.kind is AggregatorKind.DP_FIXED:
        factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=config.noise_multiplier, clients_per_round=clients, clip=config.clip
        )
    else:
        factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=config.noise_multiplier,
            clients_per_round=clients,
            initial_l2_norm_clip=config.clip,
            target_unclipped_quantile=config.target_unclipped_quantile,
            learning_rate=config.clip_learning_rate,
            # The clipped-count estimate is noised too and TFF charges that noise to the total
            # noise multiplier z: the update noise becomes (z^-2 - (2 s)^-2)^-1/2 for count stddev
            # s, and z >= 2 s is refused. TFF's default s = 0.05 * cohort breaks for small
            # cohorts; s >= z keeps the update noise within 1.16 z.
            clipped_count_stddev=max(0.05 * clients, config.noise_multiplier),
        )
    return tff.aggregators.as_weighted_aggregator(factory)
