"""What leaves a device and what the server keeps: types, values, clipping and noise.

Every test that executes a TFF computation requests the `tff_runtime` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure

from tff_pipeline import model
from tff_pipeline.federated import aggregation, client_work, process

NUM_ITEMS, DIM = 30, 4
SGD = process.ServerOptimizerConfig(name="sgdm", learning_rate=1.0, momentum=0.0)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _tensor_types(t, path=()):
    """(path, TensorType) for every tensor in a TFF type."""
    if isinstance(t, tff.TensorType):
        yield path, t
    elif isinstance(t, tff.FederatedType):
        yield from _tensor_types(t.member, path)
    elif isinstance(t, tff.SequenceType):
        yield from _tensor_types(t.element, path + ("<seq>",))
    elif isinstance(t, tff.StructType):
        for i, (name, element) in enumerate(structure.iter_elements(t)):
            yield from _tensor_types(element, path + (name if name is not None else i,))
    else:
        raise AssertionError(f"unexpected type {t!r} at {path}")


def _np_dtype(tensor_type) -> np.dtype:
    dtype = tensor_type.dtype
    return np.dtype(getattr(dtype, "as_numpy_dtype", dtype))


def _shape(tensor_type) -> tuple:
    shape = tensor_type.shape
    if hasattr(shape, "as_list"):
        shape = shape.as_list()
    return tuple(shape)


def _named(struct_type) -> dict:
    return {name: element for name, element in structure.iter_elements(struct_type)}


def _rng_client(rng: np.random.Generator, num_items: int, n: int):
    items = rng.choice(num_items, size=n, replace=False).astype(np.int32)
    ratings = rng.uniform(1.0, 5.0, size=n).astype(np.float32)
    return items, ratings


def _initial(config: model.ModelConfig, seed: int = 0) -> model.GlobalParams:
    return model.initial_global_params(config, seed=seed)


def _weights_value(params: model.GlobalParams):
    return tff.learning.models.ModelWeights(trainable=tuple(t.numpy() for t in params), non_trainable=())


def _expected_update(params: model.GlobalParams, items, ratings, config) -> list[np.ndarray]:
    """The model delta (new - old, `protocol.updates`) computed eagerly with the model code."""
    out = model.client_update(params, tf.constant(items), tf.constant(ratings), config)
    return [d.numpy().astype(np.float64) for d in out.delta]


def _global_norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a)) for a in arrays)))


def _run_one_round(config, aggregator, clients, seed=0):
    proc = process.build_fedrec_process(config, aggregator=aggregator, server_optimizer=SGD, seed=seed)
    state = proc.initialize()
    before = [np.asarray(x, np.float64) for x in proc.get_model_weights(state).trainable]
    output = proc.next(state, [client_work.client_data(i, r) for i, r in clients])
    after = [np.asarray(x, np.float64) for x in proc.get_model_weights(output.state).trainable]
    return before, after


# ---------------------------------------------------------------------------------------------
# type level
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aggregator,server_optimizer",
    [
        (aggregation.AggregatorConfig(), process.ServerOptimizerConfig()),
        (
            aggregation.AggregatorConfig(kind=aggregation.AggregatorKind.DP_FIXED, noise_multiplier=0.5),
            process.ServerOptimizerConfig(name="adam", learning_rate=0.01),
        ),
        (
            aggregation.AggregatorConfig(kind=aggregation.AggregatorKind.DP_ADAPTIVE, noise_multiplier=0.5),
            process.ServerOptimizerConfig(),
        ),
    ],
    ids=["mean-sgdm", "dp_fixed-adam", "dp_adaptive-sgdm"],
)
def test_server_state_holds_only_item_tables_and_scalars(aggregator, server_optimizer):
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM)
    proc = process.build_fedrec_process(cfg, aggregator=aggregator, server_optimizer=server_optimizer, seed=0)
    state_type = proc.initialize.type_signature.result
    assert isinstance(state_type, tff.FederatedType) and state_type.placement is tff.SERVER
    allowed = {(NUM_ITEMS, DIM), (NUM_ITEMS,), ()}

    # The model weights: exactly the three global tables, all float32.
    weights = _named(state_type.member)["global_model_weights"]
    trainable = [(_shape(t), _np_dtype(t)) for _, t in _tensor_types(_named(weights)["trainable"])]
    assert trainable == [((NUM_ITEMS, DIM), np.float32), ((NUM_ITEMS,), np.float32), ((), np.float32)]
    assert list(_tensor_types(_named(weights)["non_trainable"])) == []

    # Nothing anywhere in the state (optimizer, aggregator, ...) is a per-user vector or table.
    for path, t in _tensor_types(state_type):
        assert _shape(t) in allowed, f"state tensor {path} has shape {_shape(t)}"

    # `next` maps the same state to the same state; its metrics are scalars only; and the only
    # client input is the ratings sequence.
    next_type = proc.next.type_signature
    result = _named(next_type.result)
    assert result["state"].is_equivalent_to(state_type)
    assert _named(next_type.parameter)["state"].is_equivalent_to(state_type)
    for path, t in _tensor_types(result["metrics"]):
        assert _shape(t) == (), f"metric {path} is not a scalar"
    client_data = _named(next_type.parameter)["client_data"]
    assert client_data.placement is tff.CLIENTS
    assert client_data.member.is_equivalent_to(client_work.CLIENT_DATA_TYPE)


def test_client_work_uploads_only_the_global_update_and_a_scalar_weight():
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM)
    client_results = client_work.build_client_work(cfg).type_signature.result
    assert client_results.placement is tff.CLIENTS
    member = client_results.member
    fields = _named(member)
    assert list(fields) == ["update", "update_weight"]
    assert fields["update"].is_equivalent_to(client_work.global_weights_type(cfg).trainable)
    weight = fields["update_weight"]
    assert isinstance(weight, tff.TensorType) and _shape(weight) == () and _np_dtype(weight) == np.float32
    # Nothing in the upload has the user-parameter shapes.
    for path, t in _tensor_types(member):
        assert _shape(t) in {(NUM_ITEMS, DIM), (NUM_ITEMS,), ()}, path
    # The client work returns nothing but the ClientResult: three deltas and one weight, no
    # per-client measurements.
    assert len(list(_tensor_types(client_results))) == 4


# ---------------------------------------------------------------------------------------------
# value level: the upload of one device
# ---------------------------------------------------------------------------------------------


def _contains_vector(arrays, vector: np.ndarray, atol: float = 1e-6) -> bool:
    """True if `vector` appears as any row/column of a matrix or any contiguous slice of a flat array."""
    k = len(vector)
    for a in arrays:
        a = np.asarray(a, np.float64)
        candidates = []
        if a.ndim == 2:
            candidates += list(a) + list(a.T)
        flat = a.reshape(-1)
        candidates += [flat[s : s + k] for s in range(0, max(len(flat) - k + 1, 0))]
        if any(c.shape == vector.shape and np.allclose(c, vector, rtol=0, atol=atol) for c in candidates):
            return True
    flat_all = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in arrays])
    return any(np.allclose(flat_all[s : s + k], vector, rtol=0, atol=atol) for s in range(len(flat_all) - k + 1))


def _contains_scalar(arrays, value: float, atol: float = 1e-6) -> bool:
    return any(np.any(np.abs(np.asarray(a, np.float64) - value) <= atol) for a in arrays)


def test_upload_does_not_contain_the_user_parameters(tff_runtime):
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM, local_steps=3)
    params = _initial(cfg)
    rng = np.random.default_rng(1)
    items, ratings = _rng_client(rng, NUM_ITEMS, 12)

    result = client_work.build_client_update(cfg)(_weights_value(params), client_work.client_data(items, ratings))
    update = [np.asarray(x) for x in result.update]
    assert float(result.update_weight) == len(ratings)

    user = model.fit_user(params, tf.constant(items), tf.constant(ratings), cfg)
    embedding = user.embedding.numpy().astype(np.float64)
    bias = float(user.bias.numpy())
    # Preconditions that make the search meaningful.
    assert np.linalg.norm(embedding) > 1e-3 and abs(bias) > 1e-3
    assert _contains_vector([*update, embedding], embedding)  # the search does find a planted copy
    assert _contains_scalar([*update, np.array([bias])], bias)

    uploaded = update + [np.asarray(result.update_weight)]
    assert not _contains_vector(uploaded, embedding)
    assert not _contains_vector(uploaded, -embedding)
    assert not _contains_scalar(uploaded, bias)
    assert not _contains_scalar(uploaded, -bias)

    # The upload is the model delta new - old, as the device's (protocol.updates).
    expected = _expected_update(params, items, ratings, cfg)
    for got, want in zip(update, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert _global_norm(expected) > 0


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------


def test_dp_round_applies_the_clipped_sum_over_expected_clients(tff_runtime):
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM, local_steps=3)
    params = _initial(cfg)
    rng = np.random.default_rng(2)
    clients = [_rng_client(rng, NUM_ITEMS, n) for n in (4, 10, 25)]
    updates = [_expected_update(params, i, r, cfg) for i, r in clients]
    norms = sorted(_global_norm(u) for u in updates)
    clip = float(np.sqrt(norms[0] * norms[1]))  # clips two of the three clients, not the smallest
    expected_clients = 4.0  # != the 3 clients that actually show up
    agg = aggregation.AggregatorConfig(
        kind=aggregation.AggregatorKind.DP_FIXED, noise_multiplier=0.0, clip=clip,
        expected_clients_per_round=expected_clients,
    )
    before, after = _run_one_round(cfg, agg, clients)

    clipped = []
    for u in updates:
        scale = min(1.0, clip / _global_norm(u))
        clipped.append([scale * a for a in u])
        assert _global_norm(clipped[-1]) <= clip * (1 + 1e-9)
    assert sum(_global_norm(u) > clip for u in updates) == 2
    for k in range(3):
        expected = before[k] + sum(c[k] for c in clipped) / expected_clients
        np.testing.assert_allclose(after[k], expected, rtol=1e-4, atol=1e-6)
    # ... which is not what an unclipped mean would have given.
    unclipped = before[0] + sum(u[0] for u in updates) / len(updates)
    assert not np.allclose(after[0], unclipped, atol=1e-4)


@pytest.mark.parametrize("part_scale", [1.0, 0.1])
def test_dp_clips_the_ranking_step_scaled_and_applies_it_unscaled(tff_runtime, part_scale):
    """With the ranking head, the clipped vector is [rating deltas, part_scale * ranking step];
    the server divides the ranking part of the noised sum by part_scale again (post-processing),
    so a smaller scale gives the ranking step a smaller share of the clip."""
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM, local_steps=3, implicit_learning_rate=3.0)
    params = _initial(cfg)
    rng = np.random.default_rng(5)
    clients = [_rng_client(rng, NUM_ITEMS, n) for n in (4, 10, 25)]
    uploads = []
    for items, ratings in clients:
        out = model.client_update(params, tf.constant(items), tf.constant(ratings), cfg)
        uploads.append([d.numpy().astype(np.float64) for d in out.delta]
                       + [part_scale * out.implicit_delta.numpy().astype(np.float64)])
    norms = sorted(_global_norm(u) for u in uploads)
    clip = float(np.sqrt(norms[0] * norms[1]))
    agg = aggregation.AggregatorConfig(kind=aggregation.AggregatorKind.DP_FIXED, noise_multiplier=0.0, clip=clip,
                                       expected_clients_per_round=3.0, part_scale=part_scale)
    before, after = _run_one_round(cfg, agg, clients)
    clipped = [[min(1.0, clip / _global_norm(u)) * a for a in u] for u in uploads]
    mean = [sum(c[k] for c in clipped) / 3.0 for k in range(4)]
    np.testing.assert_allclose(after[0], before[0] + mean[0] + mean[3] / part_scale, rtol=1e-4, atol=1e-6)
    for k in (1, 2):
        np.testing.assert_allclose(after[k], before[k] + mean[k], rtol=1e-4, atol=1e-6)


def test_dp_noise_has_the_calibrated_stddev(tff_runtime):
    cfg = model.ModelConfig(num_items=200, dim=8, local_steps=0)  # zero updates from every client
    rng = np.random.default_rng(3)
    clients = [_rng_client(rng, cfg.num_items, 5) for _ in range(3)]
    z, clip, expected_clients = 1.3, 0.4, 2.0
    agg = aggregation.AggregatorConfig(
        kind=aggregation.AggregatorKind.DP_FIXED, noise_multiplier=z, clip=clip,
        expected_clients_per_round=expected_clients,
    )
    before, after = _run_one_round(cfg, agg, clients)
    change = np.concatenate([(a - b).reshape(-1) for a, b in zip(after, before)])
    n = cfg.num_items * cfg.dim + cfg.num_items + 1
    assert change.size == n
    sigma = z * clip / expected_clients
    # sample std of n Gaussians: relative standard error ~ 1/sqrt(2n) ~ 1.6%; allow ~6 of them.
    assert np.std(change) == pytest.approx(sigma, rel=6 / np.sqrt(2 * n))
    assert abs(np.mean(change)) < 6 * sigma / np.sqrt(n)
    # every coordinate is noised, including the unrated rows and the global mean
    assert np.count_nonzero(change) == n


def test_mean_aggregation_is_example_weighted(tff_runtime):
    cfg = model.ModelConfig(num_items=NUM_ITEMS, dim=DIM, local_steps=2)
    params = _initial(cfg)
    rng = np.random.default_rng(4)
    # overlapping items so the weighting matters on shared rows too
    shared = rng.choice(NUM_ITEMS, size=3, replace=False).astype(np.int32)
    rest = np.setdiff1d(np.arange(NUM_ITEMS), shared)
    items_a = shared
    items_b = np.concatenate([shared, rng.choice(rest, size=13, replace=False)]).astype(np.int32)
    clients = [
        (items_a, rng.uniform(1, 5, len(items_a)).astype(np.float32)),
        (items_b, rng.uniform(1, 5, len(items_b)).astype(np.float32)),
    ]
    counts = np.array([len(items_a), len(items_b)], np.float64)
    updates = [_expected_update(params, i, r, cfg) for i, r in clients]

    before, after = _run_one_round(cfg, aggregation.AggregatorConfig(), clients)
    for k in range(3):
        weighted = (counts[0] * updates[0][k] + counts[1] * updates[1][k]) / counts.sum()
        np.testing.assert_allclose(after[k], before[k] + weighted, rtol=1e-4, atol=1e-6)
    unweighted = (updates[0][0] + updates[1][0]) / 2
    assert not np.allclose(after[0], before[0] + unweighted, atol=1e-5)
