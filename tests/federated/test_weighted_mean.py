"""The FedAvg aggregator against TFF's own MeanFactory, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_pipeline.federated.weighted_mean import ExampleWeightedMeanFactory

VALUE_TYPE = tff.types.to_type(
    (tff.TensorType(np.float32, [5, 3]), tff.TensorType(np.float32, [5]), tff.TensorType(np.float32, []))
)
WEIGHT_TYPE = tff.TensorType(np.float32)


def _mean(factory, values, weights):
    process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
    return process.next(process.initialize(), values, weights).result


def _client_values(rng, count):
    return [
        (rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32), np.float32(rng.normal()))
        for _ in range(count)
    ]


def test_matches_tff_mean_factory_and_the_numpy_formula(tff_runtime):
    rng = np.random.default_rng(0)
    values = _client_values(rng, 7)
    weights = [np.float32(w) for w in rng.integers(1, 50, size=7)]
    ours = _mean(ExampleWeightedMeanFactory(), values, weights)
    theirs = _mean(tff.aggregators.MeanFactory(), values, weights)
    w = np.asarray(weights, np.float64)
    for k in range(3):
        expected = sum(wi * np.asarray(v[k], np.float64) for wi, v in zip(w, values)) / w.sum()
        np.testing.assert_allclose(ours[k], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7)


def test_zero_total_weight_gives_zeros_not_nan(tff_runtime):
    values = _client_values(np.random.default_rng(1), 2)
    result = _mean(ExampleWeightedMeanFactory(), values, [np.float32(0), np.float32(0)])
    for part in result:
        np.testing.assert_array_equal(part, 0.0)


def test_refuses_integer_values_and_non_scalar_weights():
    with pytest.raises(TypeError, match="float"):
        ExampleWeightedMeanFactory().create(tff.TensorType(np.int32, [3]), WEIGHT_TYPE)
    with pytest.raises(TypeError, match="scalar"):
        ExampleWeightedMeanFactory().create(VALUE_TYPE, tff.TensorType(np.float32, [2]))
