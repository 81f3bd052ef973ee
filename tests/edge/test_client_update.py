"""The update a device uploads: the model's global deltas, clipped over all three, nothing personal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_client.client_update import ClientUpdate, compute_client_update, global_norm
from edge_client.device import Device, DeviceError
from edge_client.litert_model import GlobalWeights, LiteModel, UserParams

IDS = np.array([0, 3, 5, 7, 12, 29], np.int32)
STARS = np.array([5.0, 1.0, 2.0, 4.0, 5.0, 1.0], np.float32)


@pytest.fixture
def model(make_package) -> LiteModel:
    return LiteModel.load(make_package())


def test_without_clipping_the_deltas_are_the_models_own(model):
    raw = model.client_update(IDS, STARS)
    update = compute_client_update(model, IDS, STARS, clip_norm=1e6)
    assert not update.clipped and update.num_examples == 6
    assert len(update.deltas) == 4
    for mine, theirs in zip(update.deltas, raw[:4]):
        assert mine.dtype == np.float32
        np.testing.assert_array_equal(mine, theirs)
    assert update.norm_before_clip == pytest.approx(global_norm(raw[:4])) == pytest.approx(update.norm)
    untouched = np.setdiff1d(np.arange(30), IDS)
    assert np.all(update.item_embeddings_delta[untouched] == 0) and np.any(update.item_embeddings_delta[IDS] != 0)
    # the ranking head's step is dense: every item the user did not rate is a weighted negative
    assert np.all(np.any(update.implicit_embeddings_delta[untouched] != 0, axis=1))


def test_repeated_items_are_refused_because_the_local_work_assumes_unique_ones(model):
    """Ids [1, 3, 3, 7] once gave item 3 a bias delta of -1.462 where gradient descent gives -1.209."""
    with pytest.raises(ValueError, match=r"item ids must be unique, got repeated \[3\]"):
        model.client_update(np.array([1, 3, 3, 7], np.int32), np.array([4, 2, 5, 3], np.float32))
    with pytest.raises(ValueError, match="unique"):
        model.personalize(np.array([1, 3, 3, 7], np.int32), np.array([4, 2, 5, 3], np.float32))


def test_a_long_update_is_scaled_to_the_bound_over_all_four_deltas(model):
    raw = model.client_update(IDS, STARS)
    norm = global_norm(raw[:4])
    bound = norm / 4
    update = compute_client_update(model, IDS, STARS, clip_norm=bound)
    assert update.clipped and update.norm_before_clip == pytest.approx(norm)
    assert update.norm <= bound and update.norm == pytest.approx(bound, rel=1e-6)
    for mine, theirs in zip(update.deltas, raw[:4]):  # same direction, a quarter of the length
        np.testing.assert_allclose(mine, theirs / 4, rtol=1e-5, atol=1e-9)
    flat = np.concatenate([np.ravel(d) for d in update.deltas])
    original = np.concatenate([np.ravel(d) for d in raw[:4]])
    assert flat @ original / (np.linalg.norm(flat) * np.linalg.norm(original)) == pytest.approx(1.0, abs=1e-6)


def test_the_ranking_step_is_scaled_before_the_clip(model):
    """`ranking_scale` shrinks the ranking head's step inside the clipped vector (the server
    undoes it after the noise); the other deltas keep their values when nothing is clipped."""
    raw = model.client_update(IDS, STARS)
    update = compute_client_update(model, IDS, STARS, clip_norm=1e6, ranking_scale=0.25)
    for mine, theirs in zip(update.deltas[:3], raw[:3]):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(update.implicit_embeddings_delta, 0.25 * raw[3], rtol=1e-6, atol=1e-9)
    assert update.norm_before_clip == pytest.approx(global_norm((*raw[:3], 0.25 * raw[3])))
    with pytest.raises(ValueError, match="ranking_scale"):
        compute_client_update(model, IDS, STARS, clip_norm=1.0, ranking_scale=0.0)


def test_the_update_holds_no_user_parameters(model):
    fitted = model.personalize(IDS, STARS).user  # what this user's parameters are
    update = compute_client_update(model, IDS, STARS, clip_norm=1e6)
    names = {f.name for f in dataclasses.fields(ClientUpdate)}
    assert names == {"item_embeddings_delta", "item_bias_delta", "global_mean_delta", "implicit_embeddings_delta",
                     "num_examples", "norm_before_clip", "clipped"}
    shapes = [np.shape(v) for v in vars(update).values() if isinstance(v, np.ndarray)]
    assert shapes == [(30, 4), (30,), (), (30, 4)]
    values = np.concatenate([np.ravel(d) for d in update.deltas])
    assert np.any(fitted.implicit != 0)
    assert not np.isin(fitted.embedding, values).any() and fitted.bias not in values
    assert not np.isin(fitted.implicit, values).any()


def test_the_servers_global_weights_are_loaded_first(model):
    shipped = model.get_weights().global_weights
    rng = np.random.default_rng(5)
    server = GlobalWeights(rng.normal(0, 0.5, (30, 4)).astype(np.float32),
                           rng.normal(0, 0.3, 30).astype(np.float32), np.float32(3.2))
    on_shipped = compute_client_update(model, IDS, STARS, clip_norm=1e6)
    on_server = compute_client_update(model, IDS, STARS, clip_norm=1e6, global_weights=server)
    assert not np.array_equal(on_shipped.item_embeddings_delta, on_server.item_embeddings_delta)
    reference = LiteModel.load(model.model_path.parent)
    reference.set_global(server)
    np.testing.assert_array_equal(on_server.item_embeddings_delta, reference.client_update(IDS, STARS)[0])
    assert not np.array_equal(model.get_weights().global_weights.item_bias, shipped.item_bias)  # left loaded


def test_the_user_variables_do_not_change_the_update(model):
    first = compute_client_update(model, IDS, STARS, clip_norm=1e6)
    model.set_user(UserParams(np.ones(4, np.float32), np.float32(2.0), np.full(4, 0.5, np.float32)))
    second = compute_client_update(model, IDS, STARS, clip_norm=1e6)
    for a, b in zip(first.deltas, second.deltas):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clip_norm", [0, -1.0, float("nan"), float("inf"), True])
def test_clip_norm_must_be_positive_and_finite(model, clip_norm):
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        compute_client_update(model, IDS, STARS, clip_norm=clip_norm)


def test_a_device_contributes_from_its_stored_ratings_and_keeps_its_model(make_package, tmp_path):
    device = Device(tmp_path / "device")
    device.install(make_package())
    with pytest.raises(DeviceError, match="nothing to contribute"):
        device.compute_update(None, clip_norm=1.0)
    for k, stars in zip(IDS, STARS):
        if 1000 + 7 * int(k) not in device.ratings():
            device.rate(1000 + 7 * int(k), float(stars))
    device.personalize()
    recommendations = device.recommend(k=5)
    model = device.model
    server = GlobalWeights(*(np.asarray(w) * 1.5 for w in model.get_weights().global_weights))
    update = device.compute_update(server, clip_norm=0.05)
    assert update.num_examples == 6 and update.clipped and update.norm <= 0.05
    assert device.recommend(k=5) == recommendations  # the shipped weights are back in the interpreter
    ids = np.array([(raw - 1000) // 7 for raw in device.ratings()], np.int32)
    reference = LiteModel.load(model.model_path.parent)
    expected = compute_client_update(reference, ids, np.array(list(device.ratings().values())),
                                     clip_norm=0.05, global_weights=server)
    for a, b in zip(update.deltas, expected.deltas):
        np.testing.assert_array_equal(a, b)
