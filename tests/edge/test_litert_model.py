"""LiteModel: loading checks and typed calls on a real package in the real LiteRT interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.litert_model import (
    SIGNATURE_IO,
    GlobalWeights,
    LiteModel,
    ModelError,
    UserParams,
)
from protocol.manifest import MANIFEST_FILE, SIGNATURES, Manifest, ManifestError


@pytest.fixture
def model(make_package) -> LiteModel:
    return LiteModel.load(make_package())


def test_every_manifest_signature_has_its_expected_inputs_and_outputs():
    assert set(SIGNATURE_IO) == set(SIGNATURES)


def test_load_reads_the_manifest_and_matches_the_weights(make_package, model):
    manifest = Manifest.read(make_package() / MANIFEST_FILE)
    assert model.manifest == manifest
    assert (model.num_items, model.dim) == (30, 4)
    weights = model.get_weights()
    assert weights.global_weights.item_embeddings.shape == (30, 4)
    assert weights.global_weights.item_embeddings.dtype == np.float32
    assert weights.user.embedding.shape == (4,) and weights.user.bias.shape == ()


def test_self_test_runs_every_signature_and_leaves_the_variables_as_they_were(model):
    user = UserParams(np.array([0.1, -0.2, 0.3, 0.4], np.float32), np.float32(0.5), np.array([1, 0, -1, 2], np.float32))
    model.set_user(user)
    before = model.get_weights()
    model.self_test()
    after = model.get_weights()
    for a, b in zip(before.global_weights + before.user, after.global_weights + after.user):
        np.testing.assert_array_equal(a, b)


def test_personalize_leaves_the_fit_in_the_interpreter_but_a_new_interpreter_starts_from_zero(make_package, model):
    fit = model.personalize(np.array([0, 1, 2, 3]), np.array([5.0, 1.0, 4.0, 2.0]))
    assert np.isfinite(fit.loss) and np.any(fit.user.embedding != 0)
    np.testing.assert_array_equal(model.get_weights().user.embedding, fit.user.embedding)
    np.testing.assert_array_equal(LiteModel.load(make_package()).get_weights().user.embedding, np.zeros(4))


def test_infer_and_topk_agree_and_use_the_user_variables(model):
    ids, scores, stars = model.topk(30)  # no ranking vector yet: ranked by predicted stars
    assert sorted(ids.tolist()) == list(range(30)) and np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(model.infer(ids), stars, rtol=1e-6)
    np.testing.assert_array_equal(scores, stars)
    table = model.get_weights().global_weights.item_embeddings
    model.set_user(UserParams(np.ones(4, np.float32), np.float32(1.0), np.zeros(4, np.float32)))
    np.testing.assert_allclose(model.infer(ids[:3]), stars[:3] + 1.0 + table[ids[:3]].sum(axis=1), rtol=1e-5)
    implicit = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    model.set_user(UserParams(np.ones(4, np.float32), np.float32(1.0), implicit))
    ranked = model.topk(7)  # with a ranking vector: ranked by <x, v_j>, stars shown beside
    np.testing.assert_array_equal(ranked.item_ids, np.argsort(-(table @ implicit), kind="stable")[:7])
    np.testing.assert_allclose(ranked.scores, np.sort(table @ implicit)[::-1][:7], rtol=1e-5)
    np.testing.assert_allclose(ranked.stars, model.infer(ranked.item_ids), rtol=1e-6)
    assert model.topk(100)[0].shape == (30,)  # capped to num_items
    assert model.topk(0)[0].shape == (0,)
    assert model.infer(np.zeros(0, np.int64)).shape == (0,)  # an empty batch does not reach XNNPACK


def test_calls_validate_dtypes_shapes_and_ranges(model):
    with pytest.raises(ValueError, match=r"dense item ids must be in \[0, 30\), got \[30\]"):
        model.infer(np.array([1, 30]))
    with pytest.raises(TypeError, match="item_ids must be integers"):
        model.infer(np.array([1.0]))
    with pytest.raises(ValueError, match="one-dimensional"):
        model.infer(np.array([[1]]))
    with pytest.raises(ValueError, match="at least one rating"):
        model.personalize(np.array([], np.int32), np.array([], np.float32))
    with pytest.raises(ValueError, match=r"within the model's range \[1, 5\], got \[nan\]"):
        model.client_update(np.array([1]), np.array([np.nan]))
    with pytest.raises(ValueError, match=r"within the model's range \[1, 5\], got \[1e\+300\]"):
        model.personalize(np.array([1]), np.array([1e300]))  # would be inf as float32
    with pytest.raises(ValueError, match="ratings of shape"):
        model.personalize(np.array([1, 2]), np.array([3.0]))
    # LiteRT itself would accept a user vector of the wrong length without a word
    with pytest.raises(ValueError, match=r"user_embedding must have shape \(4,\)"):
        model.set_user(UserParams(np.zeros(5, np.float32), np.float32(0), np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match=r"implicit_embedding must have shape \(4,\)"):
        model.set_user(UserParams(np.zeros(4, np.float32), np.float32(0), np.zeros(3, np.float32)))
    weights = model.get_weights().global_weights
    with pytest.raises(ValueError, match=r"item_bias must have shape \(30,\)"):
        model.set_global(GlobalWeights(weights.item_embeddings, weights.item_bias[:29], weights.global_mean))
    with pytest.raises(ValueError, match="non-finite"):
        model.set_global(GlobalWeights(weights.item_embeddings * np.inf, weights.item_bias, weights.global_mean))
    assert model.infer(np.array([1, 2], np.int64)).shape == (2,)  # int64 ids are converted, not refused


def test_garbage_bytes_give_a_model_error_naming_the_file(make_package, tmp_path):
    manifest = Manifest.read(make_package() / MANIFEST_FILE)
    with pytest.raises(ModelError, match=r"x\.tflite: not a usable TFLite model"):
        LiteModel.from_bytes(b"\x00" * 1000, manifest, model_path=tmp_path / "x.tflite")
    assert issubclass(ModelError, ManifestError)  # callers refuse packages with one except clause


def test_an_unaccelerated_model_computes_what_the_accelerated_one_does(make_package):
    package = make_package()
    fast, plain = LiteModel.load(package), LiteModel.load(package, accelerated=False)
    plain.self_test()
    ids, stars = np.array([3, 0, 17, 9, 25], np.int32), np.array([5, 1, 4, 2, 3], np.float32)
    for one, other in zip(fast.personalize(ids, stars).user, plain.personalize(ids, stars).user):
        np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fast.topk(7).item_ids, plain.topk(7).item_ids)
    for one, other in zip(fast.client_update(ids, stars), plain.client_update(ids, stars)):
        np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-6)
