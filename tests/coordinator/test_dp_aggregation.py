"""The coordinator's aggregation of a secure sum against the simulation's TFF aggregators.

The devices' side is a numpy reference here (clip all 4 parts jointly, part 3 scaled first; pack
with `protocol.upload`); TFF's processes get the raw records and clip them themselves, so each
comparison also checks that clipping on the device and summing equals TFF's per-record path.
Deterministic tests run at noise 0; one statistical test checks the noise scale. Tests that
execute a TFF computation request `tff_runtime`.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators import differential_privacy

from coordinator.server_aggregation import ServerModel, SummedUpdateAggregator
from protocol import upload
from tff_pipeline import model
from tff_pipeline.federated import aggregation, client_work, process

LAYOUT = upload.UploadLayout(num_items=6, dim=3)
VALUE_TYPE = tff.types.to_type(tuple(tff.TensorType(np.float32, list(shape)) for shape in LAYOUT.part_shapes))
WEIGHT_TYPE = tff.TensorType(np.float32)
FIXED, ADAPTIVE = aggregation.AggregatorKind.DP_FIXED, aggregation.AggregatorKind.DP_ADAPTIVE


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _records(rng: np.random.Generator, count: int, layout: upload.UploadLayout = LAYOUT) -> list[tuple]:
    """Per-device deltas (float32, 4 parts) of norms spread over a factor ~10."""
    return [
        tuple((scale * rng.normal(size=shape)).astype(np.float32) for shape in layout.part_shapes)
        for scale in np.geomspace(0.05, 0.5, count)
    ]


def _norm(parts) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(p, np.float64))) for p in parts)))


def _device_upload(parts, *, clip: float, part_scale: float) -> np.ndarray:
    """What a DP device uploads: part 3 scaled, all parts clipped jointly, weight 1, the bit."""
    scaled = [np.asarray(p, np.float64) * (part_scale if k in upload.PER_DEVICE_PARTS else 1.0)
              for k, p in enumerate(parts)]
    norm = _norm(scaled)
    factor = min(1.0, clip / norm)
    return LAYOUT.pack(tuple(factor * p for p in scaled), weight=1.0, unclipped=norm <= clip)


def _dp_config(kind, *, clip: float, part_scale: float = 1.0, clients: float = 3.0, z: float = 0.0):
    return aggregation.AggregatorConfig(kind=kind, noise_multiplier=z, clip=clip, expected_clients_per_round=clients,
                                        part_scale=part_scale, clip_learning_rate=0.5)


def _tff_process(config: aggregation.AggregatorConfig):
    return aggregation.build_aggregator(config, per_device_parts=upload.PER_DEVICE_PARTS).create(VALUE_TYPE, WEIGHT_TYPE)


def _assert_parts_close(ours, theirs, rtol=1e-5, atol=1e-6):
    assert len(ours) == len(theirs) == 4
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == np.float32 and a.shape == LAYOUT.part_shapes[k]
        np.testing.assert_allclose(a, np.asarray(b), rtol=rtol, atol=atol, err_msg=f"part {k}")


def _assert_query_states_close(ours, tff_state):
    ours_flat = [float(x) for x in tf.nest.flatten(ours)]
    theirs_flat = [float(x) for x in tf.nest.flatten(tff_state.query_state)]
    np.testing.assert_allclose(ours_flat, theirs_flat, rtol=1e-6)


@pytest.fixture
def no_count_noise(monkeypatch):
    """Zero noise on the adaptive clipped count (the rule's floor 0.05 * cohort would make the
    clip random even at noise multiplier 0), patched for both the simulation and the coordinator."""
    monkeypatch.setattr(aggregation, "adaptive_clipped_count_stddev", lambda config: 0.0)


# ---------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------


def _tff_preset(config: aggregation.AggregatorConfig) -> tff.aggregators.DifferentiallyPrivateFactory:
    """TFF's own preset for `config` (what the simulation used before it built its query itself)."""
    clients = config.expected_clients_per_round
    if config.kind is FIXED:
        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=config.noise_multiplier, clients_per_round=clients, clip=config.clip)
    return tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        noise_multiplier=config.noise_multiplier, clients_per_round=clients, initial_l2_norm_clip=config.clip,
        target_unclipped_quantile=config.target_unclipped_quantile, learning_rate=config.clip_learning_rate,
        clipped_count_stddev=aggregation.adaptive_clipped_count_stddev(config))


@pytest.mark.parametrize("kind", [FIXED, ADAPTIVE])
def test_the_query_is_the_one_tffs_presets_build(tff_runtime, kind):
    """`aggregation.dp_query` (the simulation's and the coordinator's) builds the query that TFF's
    `gaussian_fixed` / `gaussian_adaptive` build: the same initial state (clip, stddev, the split
    of z, the quantile estimator's parameters, the denominator) and the same DP event."""
    config = _dp_config(kind, clip=0.3, z=0.7, clients=20.0)
    query = aggregation.dp_query(config)
    assert isinstance(query, tfp.NormalizedQuery)
    ours = aggregation.build_dp_factory(config).create(VALUE_TYPE).initialize()
    theirs = _tff_preset(config).create(VALUE_TYPE).initialize()
    assert tf.nest.map_structure(lambda _: 0, ours.query_state) == tf.nest.map_structure(lambda _: 0, theirs.query_state)
    np.testing.assert_array_equal([float(x) for x in tf.nest.flatten(ours.query_state)],
                                  [float(x) for x in tf.nest.flatten(theirs.query_state)])
    np.testing.assert_array_equal([float(x) for x in tf.nest.flatten(query.initial_global_state())],
                                  [float(x) for x in tf.nest.flatten(theirs.query_state)])
    assert differential_privacy.extract_dp_event_from_state(ours._replace(is_init_state=False)) == \
        differential_privacy.extract_dp_event_from_state(theirs._replace(is_init_state=False))


@pytest.mark.parametrize("kind", [FIXED, ADAPTIVE])
def test_the_query_adapts_and_sums_as_tffs_presets_do(tff_runtime, kind, no_count_noise):
    """Rounds through both factories at noise 0: the same means and the same next states (the
    adaptive clip's geometric update included)."""
    rng = np.random.default_rng(9)
    config = _dp_config(kind, clip=1.0, clients=4.0)
    ours, theirs = (factory.create(VALUE_TYPE) for factory in (aggregation.build_dp_factory(config), _tff_preset(config)))
    our_state, their_state = ours.initialize(), theirs.initialize()
    for _ in range(3):
        records = _records(rng, 5)
        our_output, their_output = ours.next(our_state, records), theirs.next(their_state, records)
        for a, b in zip(our_output.result, their_output.result):
            np.testing.assert_array_equal(a, b)
        our_state, their_state = our_output.state, their_output.state
        np.testing.assert_array_equal([float(x) for x in tf.nest.flatten(our_state.query_state)],
                                      [float(x) for x in tf.nest.flatten(their_state.query_state)])


def test_without_dp_the_state_is_empty_and_there_is_no_clip():
    aggregator = SummedUpdateAggregator(config=aggregation.AggregatorConfig(), layout=LAYOUT)
    state = aggregator.initial_state()
    assert aggregator.device_clip(state) is None
    assert aggregator.state_to_arrays(state) == []
    assert aggregator.state_from_arrays([]) == ()


@pytest.mark.parametrize("kind", [FIXED, ADAPTIVE])
def test_state_round_trips_through_arrays_and_bad_arrays_are_refused(kind):
    aggregator = SummedUpdateAggregator(config=_dp_config(kind, clip=0.3, z=0.5), layout=LAYOUT)
    state = aggregator.initial_state()
    assert aggregator.device_clip(state) == pytest.approx(0.3)
    summed = sum(_device_upload(r, clip=0.3, part_scale=1.0) for r in _records(np.random.default_rng(0), 3))
    new_state = aggregator.aggregate(state, summed, 3).new_state
    arrays = aggregator.state_to_arrays(new_state)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays)
    restored = aggregator.state_from_arrays(arrays)
    assert tf.nest.map_structure(lambda _: 0, restored) == tf.nest.map_structure(lambda _: 0, new_state)
    np.testing.assert_array_equal(aggregator.state_to_arrays(restored), arrays)
    assert aggregator.device_clip(restored) == aggregator.device_clip(new_state)
    with pytest.raises(ValueError, match="arrays"):
        aggregator.state_from_arrays(arrays[:-1])
    with pytest.raises(ValueError, match="shape"):
        aggregator.state_from_arrays([np.zeros(2, np.float32)] + arrays[1:])


def test_sums_that_cannot_come_from_the_reporters_are_refused():
    rng = np.random.default_rng(1)
    adaptive = SummedUpdateAggregator(config=_dp_config(ADAPTIVE, clip=0.3), layout=LAYOUT)
    summed = sum(_device_upload(r, clip=0.3, part_scale=1.0) for r in _records(rng, 3))
    state = adaptive.initial_state()
    with pytest.raises(ValueError, match="number of reporters"):
        adaptive.aggregate(state, summed, 4)
    bad = summed.copy()
    bad[LAYOUT.unclipped_index] = 5.0
    with pytest.raises(ValueError, match="unclipped"):
        adaptive.aggregate(state, bad, 3)
    bad = summed.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        adaptive.aggregate(state, bad, 3)
    with pytest.raises(upload.UploadError):
        adaptive.aggregate(state, summed[:-1], 3)
    with pytest.raises(ValueError, match="num_reporters"):
        adaptive.aggregate(state, summed, -1)
    mean = SummedUpdateAggregator(config=aggregation.AggregatorConfig(), layout=LAYOUT)
    bad = summed.copy()
    bad[LAYOUT.weight_index] = -1.0
    with pytest.raises(ValueError, match="negative"):
        mean.aggregate((), bad, 3)


def test_without_dp_an_empty_round_gives_zeros_not_nan():
    aggregator = SummedUpdateAggregator(config=aggregation.AggregatorConfig(), layout=LAYOUT)
    result = aggregator.aggregate((), np.zeros(LAYOUT.length), 0)
    assert result.dp_event is None
    for part in result.mean_delta:
        np.testing.assert_array_equal(part, 0.0)


# ---------------------------------------------------------------------------------------------
# against the simulation's TFF aggregators (noise 0)
# ---------------------------------------------------------------------------------------------


def test_without_dp_equals_the_simulations_example_weighted_mean(tff_runtime):
    rng = np.random.default_rng(2)
    records = _records(rng, 4)
    counts = [3.0, 17.0, 1.0, 40.0]
    summed = sum(LAYOUT.pack(r, weight=n, unclipped=False) for r, n in zip(records, counts))

    aggregator = SummedUpdateAggregator(config=aggregation.AggregatorConfig(), layout=LAYOUT)
    ours = aggregator.aggregate(aggregator.initial_state(), summed, len(records))

    tff_process = _tff_process(aggregation.AggregatorConfig())
    theirs = tff_process.next(tff_process.initialize(), records, [np.float32(n) for n in counts]).result
    _assert_parts_close(ours.mean_delta, theirs)
    assert ours.dp_event is None and ours.new_state == ()
    # ... the per-example mean on parts 0..2, the per-device mean on part 3
    np.testing.assert_allclose(ours.mean_delta[1], sum(n * r[1] for r, n in zip(records, counts)) / sum(counts),
                               rtol=1e-5)
    np.testing.assert_allclose(ours.mean_delta[3], sum(r[3] for r in records) / 4, rtol=1e-5, atol=1e-7)


def test_dp_fixed_equals_tffs_dp_factory_with_part_scale(tff_runtime):
    rng = np.random.default_rng(3)
    records = _records(rng, 4)
    part_scale = 0.5
    scaled_norms = sorted(_norm(r[:3] + (part_scale * r[3],)) for r in records)
    clip = float(np.sqrt(scaled_norms[1] * scaled_norms[2]))  # clips two of the four devices
    config = _dp_config(FIXED, clip=clip, part_scale=part_scale, clients=5.0)

    aggregator = SummedUpdateAggregator(config=config, layout=LAYOUT)
    state = aggregator.initial_state()
    assert aggregator.device_clip(state) == pytest.approx(clip)
    summed = sum(_device_upload(r, clip=clip, part_scale=part_scale) for r in records)
    ours = aggregator.aggregate(state, summed, len(records))

    tff_process = _tff_process(config)
    output = tff_process.next(tff_process.initialize(), records, [np.float32(1)] * len(records))
    _assert_parts_close(ours.mean_delta, output.result)
    _assert_query_states_close(ours.new_state, output.state)
    assert ours.dp_event == differential_privacy.extract_dp_event_from_state(output.state)


def test_dp_adaptive_equals_tffs_dp_factory_over_rounds(tff_runtime, no_count_noise):
    rng = np.random.default_rng(4)
    part_scale = 0.25
    config = _dp_config(ADAPTIVE, clip=1.0, part_scale=part_scale, clients=4.0)  # amid the norms
    aggregator = SummedUpdateAggregator(config=config, layout=LAYOUT)
    tff_process = _tff_process(config)
    state, tff_state = aggregator.initial_state(), tff_process.initialize()
    _assert_query_states_close(state, tff_state)
    clips = []
    for _ in range(3):
        clip = aggregator.device_clip(state)
        clips.append(clip)
        records = _records(rng, 5)
        summed = sum(_device_upload(r, clip=clip, part_scale=part_scale) for r in records)
        assert 0 < summed[LAYOUT.unclipped_index] < len(records)  # the clip splits the cohort
        ours = aggregator.aggregate(state, summed, len(records))
        output = tff_process.next(tff_state, records, [np.float32(1)] * len(records))
        _assert_parts_close(ours.mean_delta, output.result)
        _assert_query_states_close(ours.new_state, output.state)
        assert aggregator.device_clip(ours.new_state) == pytest.approx(
            float(output.measurements["dp_query_metrics"]["clip"]), rel=1e-6)
        assert ours.dp_event == differential_privacy.extract_dp_event_from_state(output.state)
        state, tff_state = ours.new_state, output.state
    clips.append(aggregator.device_clip(state))
    assert len(set(clips)) == 4, f"the clip should adapt every round: {clips}"


# ---------------------------------------------------------------------------------------------
# the server step against the simulation's finalizer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [process.ServerOptimizerConfig(name="sgdm", learning_rate=0.7, momentum=0.9),
     process.ServerOptimizerConfig(name="adam", learning_rate=0.05, momentum=0.9, adam_epsilon=1e-3)],
    ids=["sgdm", "adam"],
)
def test_server_step_equals_the_simulations_finalizer(tff_runtime, optimizer):
    rng = np.random.default_rng(5)
    params = (rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=6).astype(np.float32), np.float32(3.5))
    deltas = [_records(rng, 1)[0] for _ in range(2)]

    weights_type = client_work.global_weights_type(model.ModelConfig(num_items=6, dim=3))
    finalizer = process.build_delta_finalizer(optimizer.build(), weights_type, VALUE_TYPE)
    tff_state = finalizer.initialize()
    weights = tff.learning.models.ModelWeights(trainable=params, non_trainable=())

    server = ServerModel.create(params=params, optimizer=optimizer)
    for step, delta in enumerate(deltas):
        output = finalizer.next(tff_state, weights, delta)
        tff_state, weights = output.state, output.result
        server = server.apply(delta)
        for ours, theirs in zip(server.params, weights.trainable):
            assert ours.dtype == np.float32
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
        if step == 0:  # a restart between the steps: the state goes through numpy arrays
            server = ServerModel.restore(params=server.params, optimizer=optimizer,
                                         optimizer_arrays=server.optimizer_arrays())
    np.testing.assert_allclose(
        [float(np.sum(x)) for x in tf.nest.flatten(server.optimizer_state)],
        [float(np.sum(x)) for x in tf.nest.flatten(tff_state)], rtol=1e-6)


def test_server_model_refuses_what_it_cannot_apply_and_takes_hparams_from_the_config():
    params = (np.zeros((6, 3), np.float32), np.zeros(6, np.float32), np.float32(0.0))
    adam = process.ServerOptimizerConfig(name="adam", learning_rate=0.1)
    server = ServerModel.create(params=params, optimizer=adam)
    delta = tuple(np.ones(shape, np.float32) for shape in LAYOUT.part_shapes)
    stepped = server.apply(delta)
    assert not np.array_equal(stepped.params[0], server.params[0])  # immutable: a new model
    np.testing.assert_array_equal(server.params[0], 0.0)
    with pytest.raises(ValueError, match="read-only"):
        stepped.params[0][0, 0] = 1.0
    bad = list(delta)
    bad[1] = np.full(6, np.inf, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        server.apply(bad)
    with pytest.raises(ValueError, match="shape"):
        server.apply((np.ones((5, 3), np.float32),) + delta[1:])
    with pytest.raises(ValueError, match="arrays"):
        ServerModel.restore(params=params, optimizer=adam, optimizer_arrays=stepped.optimizer_arrays()[:-1])
    faster = process.ServerOptimizerConfig(name="adam", learning_rate=0.5)
    restored = ServerModel.restore(params=stepped.params, optimizer=faster, optimizer_arrays=stepped.optimizer_arrays())
    assert float(restored.optimizer_state["learning_rate"]) == 0.5
    assert int(restored.optimizer_state["step"]) == int(stepped.optimizer_state["step"]) == 1


# ---------------------------------------------------------------------------------------------
# noise scale (statistical)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [FIXED, ADAPTIVE])
def test_noise_on_the_mean_delta_has_the_calibrated_stddev(kind):
    """Zero updates from 3 devices: the mean delta is pure noise of stddev z' * clip / cohort, z'
    = z for fixed clipping and (z^-2 - (2 s)^-2)^-1/2 under adaptive clipping (TFF's split of z
    between the update and the clipped count, s the count stddev); part 3 has 1 / part_scale of
    it on top."""
    tf.random.set_seed(7)
    layout = upload.UploadLayout(num_items=3000, dim=8)
    z, clip, clients, part_scale = 1.3, 0.4, 10.0, 0.5
    config = _dp_config(kind, clip=clip, part_scale=part_scale, clients=clients, z=z)
    aggregator = SummedUpdateAggregator(config=config, layout=layout)
    summed = np.zeros(layout.length)
    summed[layout.weight_index] = 3.0
    summed[layout.unclipped_index] = 2.0
    result = aggregator.aggregate(aggregator.initial_state(), summed, 3)

    if kind is FIXED:
        z_update = z
        assert isinstance(result.dp_event, dp_accounting.GaussianDpEvent)
        assert result.dp_event.noise_multiplier == pytest.approx(z, rel=1e-6)
    else:
        s = aggregation.adaptive_clipped_count_stddev(config)
        z_update = (z**-2 - (2 * s) ** -2) ** -0.5
        assert z_update > z * 1.01  # the split is visible at this size
        update_event, count_event = result.dp_event.events
        assert update_event.noise_multiplier == pytest.approx(z_update, rel=1e-6)
        assert count_event.noise_multiplier == pytest.approx(2 * s, rel=1e-6)  # stddev s at sensitivity 0.5
    sigma = z_update * clip / clients
    rating_head = np.concatenate([p.reshape(-1) for p in result.mean_delta[:3]]).astype(np.float64)
    ranking_step = result.mean_delta[3].reshape(-1).astype(np.float64)
    for values, expected in ((rating_head, sigma), (ranking_step, sigma / part_scale)):
        n = values.size
        # sample std of n Gaussians: relative standard error 1/sqrt(2n) (< 0.5% here); allow 6.
        assert np.std(values) == pytest.approx(expected, rel=6 / np.sqrt(2 * n))
        assert abs(np.mean(values)) < 6 * expected / np.sqrt(n)
        assert np.count_nonzero(values) == n
