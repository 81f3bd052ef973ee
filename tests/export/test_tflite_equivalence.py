"""The exported TFLite model computes what the TF model and the TFF client work compute.

Tolerances: the device solves the user's ridge system by conjugate gradient in float32, the
simulation by a direct LAPACK solve; on these well-conditioned systems the two agree to ~1e-5
relative, so outputs are compared at rtol 1e-4 / atol 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from ai_edge_litert.interpreter import Interpreter

from protocol.manifest import MODEL_FILE, SIGNATURES, Manifest
from tff_pipeline import model
from tff_pipeline.federated import client_work

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def package(make_package):
    return make_package(num_items=30, dim=4, seed=5)


@pytest.fixture()
def runners(package):
    interpreter = Interpreter(model_path=str(package / MODEL_FILE))
    return {name: interpreter.get_signature_runner(name) for name in interpreter.get_signature_list()}


def _params_and_config(runners, package):
    manifest = Manifest.read(package / "manifest.json")
    weights = runners["get_weights"]()
    params = model.GlobalParams(weights["item_embeddings"], weights["item_bias"], weights["global_mean"])
    config = model.ModelConfig(num_items=manifest.num_items, dim=manifest.dim, **manifest.hyperparameters)
    return params, config


def _user_data(seed: int, num_items: int, n: int = 12):
    rng = np.random.default_rng(seed)
    items = rng.choice(num_items, size=n, replace=False).astype(np.int32)
    ratings = rng.integers(1, 6, size=n).astype(np.float32)
    return items, ratings


def test_every_signature_is_present_and_the_model_has_no_flex_ops(package, runners):
    assert set(SIGNATURES) <= set(runners)
    assert b"Flex" not in (package / MODEL_FILE).read_bytes()


def test_client_update_matches_the_tff_client_work(package, runners, tff_runtime):
    params, config = _params_and_config(runners, package)
    items, ratings = _user_data(1, config.num_items)
    device = runners["client_update"](item_ids=items, ratings=ratings)

    weights = tff.learning.models.ModelWeights(trainable=tuple(np.asarray(p) for p in params), non_trainable=())
    simulated = client_work.build_client_update(config)(weights, client_work.client_data(items, ratings))
    # Both sides upload the model delta new - old (protocol.updates).
    np.testing.assert_allclose(device["item_embeddings_delta"], simulated.update[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(device["item_bias_delta"], simulated.update[1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(device["global_mean_delta"], simulated.update[2], rtol=RTOL, atol=ATOL)
    assert config.implicit and len(simulated.update) == 4  # the ranking head's step is the fourth tensor
    np.testing.assert_allclose(device["implicit_embeddings_delta"], simulated.update[3], rtol=RTOL, atol=ATOL)
    assert float(device["num_examples"]) == simulated.update_weight == len(items)
    assert np.abs(device["item_embeddings_delta"]).sum() > 0  # a real update, not zeros
    assert np.all(np.abs(device["implicit_embeddings_delta"]).sum(axis=1) > 0)  # dense


def test_client_update_changes_no_variable(runners):
    before = runners["get_weights"]()
    items, ratings = _user_data(2, len(before["item_bias"]))
    runners["client_update"](item_ids=items, ratings=ratings)
    after = runners["get_weights"]()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_personalize_fits_the_user_as_the_tf_model_does_and_infer_predicts_with_it(package, runners):
    params, config = _params_and_config(runners, package)
    items, ratings = _user_data(3, config.num_items)
    fitted = runners["personalize"](item_ids=items, ratings=ratings)
    reference = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)  # direct solve
    np.testing.assert_allclose(fitted["user_embedding"], reference.embedding.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fitted["user_bias"], reference.bias.numpy(), rtol=RTOL, atol=ATOL)
    implicit = model.fit_implicit_user(params, tf.constant(items), config)  # direct solve
    np.testing.assert_allclose(fitted["implicit_embedding"], implicit.numpy(), rtol=RTOL, atol=ATOL)
    stored = runners["get_weights"]()
    np.testing.assert_array_equal(stored["user_embedding"], fitted["user_embedding"])
    np.testing.assert_array_equal(stored["implicit_embedding"], fitted["implicit_embedding"])

    every_item = np.arange(config.num_items, dtype=np.int32)
    expected = model.predict(params, reference, tf.constant(every_item)).numpy()
    np.testing.assert_allclose(runners["infer"](item_ids=every_item)["scores"], expected, rtol=RTOL, atol=1e-4)
    errors = expected[items] - ratings
    np.testing.assert_allclose(fitted["loss"], np.mean(errors**2), rtol=1e-3)


def test_topk_is_the_best_k_of_infer_until_a_ranking_vector_is_set(runners):
    num_items = len(runners["get_weights"]()["item_bias"])
    user = dict(user_embedding=np.array([0.5, -1.0, 0.2, 0.9], np.float32), user_bias=np.float32(0.1))
    runners["set_user"](**user, implicit_embedding=np.zeros(4, np.float32))
    scores = runners["infer"](item_ids=np.arange(num_items, dtype=np.int32))["scores"]
    top = runners["topk"](k=np.int32(7))
    np.testing.assert_array_equal(top["item_ids"], np.argsort(-scores, kind="stable")[:7])
    np.testing.assert_allclose(top["scores"], np.sort(scores)[::-1][:7], rtol=1e-6)
    np.testing.assert_allclose(top["stars"], top["scores"], rtol=1e-6)
    assert len(runners["topk"](k=np.int32(num_items + 10))["item_ids"]) == num_items


def test_topk_ranks_by_the_tf_models_implicit_scores(package, runners):
    params, config = _params_and_config(runners, package)
    implicit = np.array([0.3, -0.7, 1.1, 0.05], np.float32)
    runners["set_user"](user_embedding=np.zeros(4, np.float32), user_bias=np.float32(0.0), implicit_embedding=implicit)
    expected = model.implicit_scores(model.GlobalParams(*(tf.constant(p) for p in params)), tf.constant(implicit)).numpy()
    top = runners["topk"](k=np.int32(7))
    np.testing.assert_array_equal(top["item_ids"], np.argsort(-expected, kind="stable")[:7])
    np.testing.assert_allclose(top["scores"], np.sort(expected)[::-1][:7], rtol=RTOL, atol=ATOL)


def test_topk_follows_every_signature_that_changes_what_it_ranks(package, runners):
    """topk ranks scores the model keeps beside the weights (it does not read the item table):
    personalize, set_user and set_global must all leave them as the weights give them."""
    params, config = _params_and_config(runners, package)
    items, ratings = _user_data(4, config.num_items)

    def expect_ranking(table, item_bias, global_mean, fitted):
        stars = global_mean + fitted["user_bias"] + item_bias + table @ fitted["user_embedding"]
        ranking = table @ fitted["implicit_embedding"] if np.any(fitted["implicit_embedding"]) else stars
        top = runners["topk"](k=np.int32(config.num_items))
        np.testing.assert_array_equal(top["item_ids"][:5], np.argsort(-ranking, kind="stable")[:5])
        np.testing.assert_allclose(top["scores"], np.sort(ranking)[::-1], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(top["stars"], stars[top["item_ids"]], rtol=RTOL, atol=ATOL)

    fitted = runners["personalize"](item_ids=items, ratings=ratings)
    assert np.any(fitted["implicit_embedding"])
    expect_ranking(*(np.asarray(p) for p in params), fitted)
    rng = np.random.default_rng(11)
    table = rng.normal(0.0, 0.5, np.shape(params.item_embeddings)).astype(np.float32)
    item_bias = rng.normal(0.0, 0.3, np.shape(params.item_bias)).astype(np.float32)
    runners["set_global"](item_embeddings=table, item_bias=item_bias, global_mean=np.float32(3.2))
    expect_ranking(table, item_bias, np.float32(3.2), fitted)
    zero_ranking = dict(fitted, implicit_embedding=np.zeros_like(fitted["implicit_embedding"]))
    runners["set_user"](user_embedding=fitted["user_embedding"], user_bias=fitted["user_bias"],
                        implicit_embedding=zero_ranking["implicit_embedding"])
    expect_ranking(table, item_bias, np.float32(3.2), zero_ranking)


def test_set_global_and_set_user_round_trip(runners):
    weights = runners["get_weights"]()
    rng = np.random.default_rng(0)
    new = {
        "item_embeddings": rng.normal(size=weights["item_embeddings"].shape).astype(np.float32),
        "item_bias": rng.normal(size=weights["item_bias"].shape).astype(np.float32),
        "global_mean": np.float32(3.1),
    }
    runners["set_global"](**new)
    runners["set_user"](user_embedding=np.ones(weights["user_embedding"].shape, np.float32), user_bias=np.float32(-0.2),
                        implicit_embedding=np.full(weights["user_embedding"].shape, 0.5, np.float32))
    got = runners["get_weights"]()
    for key, value in new.items():
        np.testing.assert_array_equal(got[key], value)
    np.testing.assert_array_equal(got["user_embedding"], 1.0)
    np.testing.assert_array_equal(got["implicit_embedding"], 0.5)
    assert float(got["user_bias"]) == pytest.approx(-0.2)


def test_a_model_without_the_ranking_head_fits_and_updates_as_the_tf_model_does():
    """With the ranking head off the fits sweep the rating head's system alone (`OnDeviceModel._fit`)."""
    from tff_pipeline.export.ondevice_model import OnDeviceModel
    from tff_pipeline.export.tflite import convert

    rng = np.random.default_rng(11)
    config = model.ModelConfig(num_items=20, dim=3, local_steps=2)
    assert not config.implicit
    params = model.GlobalParams(rng.normal(0, 0.5, (20, 3)).astype(np.float32),
                                rng.normal(0, 0.3, 20).astype(np.float32), np.float32(3.5))
    interpreter = Interpreter(model_content=convert(OnDeviceModel(params, config, manifest_digest=bytes(32))))
    items, ratings = _user_data(4, config.num_items, n=8)
    fitted = interpreter.get_signature_runner("personalize")(item_ids=items, ratings=ratings)
    reference = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)
    np.testing.assert_allclose(fitted["user_embedding"], reference.embedding.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fitted["user_bias"], reference.bias.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(fitted["implicit_embedding"], np.zeros(3, np.float32))
    device = interpreter.get_signature_runner("client_update")(item_ids=items, ratings=ratings)
    expected = model.client_update(params, tf.constant(items), tf.constant(ratings), config)
    np.testing.assert_allclose(device["item_embeddings_delta"], expected.delta.item_embeddings, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(device["item_bias_delta"], expected.delta.item_bias, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(device["global_mean_delta"], expected.delta.global_mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(device["implicit_embeddings_delta"], np.zeros((20, 3), np.float32))
