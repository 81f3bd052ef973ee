"""Device: recommend, personalize, restarts and upgrades, on real packages, LiteRT and SQLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_client.device import Device, DeviceError
from edge_client.litert_model import LiteModel

BASE = {}  # make_package() defaults: 30 items, dim 4, seed 0, round 1
NEWER_SAME_DIM = {"seed": 1, "round_num": 2}
WIDER = {"dim": 6, "seed": 2, "round_num": 3}
SMALLER_WIDER = {"num_items": 20, "dim": 6, "seed": 3, "round_num": 4}  # knows only items 1000..1133


def _installed(tmp_path: Path, package: Path) -> Device:
    device = Device(tmp_path / "device")
    device.install(package)
    return device


def _strong_tastes(device: Device) -> dict[int, float]:
    """Loves the 6 items furthest along the first embedding axis, hates the 6 at the other end."""
    model = device.model
    axis = model.get_weights().global_weights.item_embeddings[:, 0]
    order = np.argsort(axis)
    ids = model.manifest.item_ids
    ratings = {ids[d]: 5.0 for d in order[-6:]} | {ids[d]: 1.0 for d in order[:6]}
    for item_id, stars in ratings.items():
        device.rate(item_id, stars)
    return ratings


def test_recommend_excludes_rated_items_and_shows_titles(make_package, tmp_path):
    device = _installed(tmp_path, make_package(**BASE))
    everything = device.recommend(k=50)
    assert [r.rank for r in everything] == list(range(1, 31))
    assert all(r.title == f"Item {r.item_id}" for r in everything)
    assert all(1.0 <= r.score <= 5.0 for r in everything)
    assert [r.score for r in everything] == sorted((r.score for r in everything), reverse=True)
    rated = [everything[0].item_id, everything[5].item_id, everything[-1].item_id]
    for item_id in rated:
        device.rate(item_id, 3)
    after = device.recommend(k=5)
    assert len(after) == 5 and not {r.item_id for r in after} & set(rated)
    assert len(device.recommend(k=50)) == 27
    with pytest.raises(DeviceError, match="k must be a positive integer"):
        device.recommend(k=0)


def test_recommend_without_titles_and_without_personal_parameters_uses_the_global_model(make_package, tmp_path):
    package = make_package(titles=False)
    device = _installed(tmp_path, package)
    recommendations = device.recommend(k=3)
    assert all(r.title is None for r in recommendations)
    top = LiteModel.load(package).topk(3)  # a fresh interpreter holds the zero user: ranked by stars
    assert [r.item_id for r in recommendations] == [1000 + 7 * int(d) for d in top.item_ids]
    np.testing.assert_allclose([r.score for r in recommendations], np.clip(top.stars, 1, 5), rtol=1e-6)
    np.testing.assert_array_equal(top.scores, top.stars)


def test_personalize_moves_the_ranking_toward_the_users_tastes(make_package, tmp_path):
    device = _installed(tmp_path, make_package(**BASE))
    ratings = _strong_tastes(device)
    model = device.model
    axis = model.get_weights().global_weights.item_embeddings[:, 0]
    unrated = np.array([d for d in range(30) if model.manifest.item_ids[d] not in ratings], np.int32)
    before = device.recommend(k=5)
    global_scores = model.infer(unrated)
    report = device.personalize()
    assert report.num_ratings == 12 and report.model_version == model.model_version
    assert np.isfinite(report.loss)
    after = device.recommend(k=5)
    assert [r.item_id for r in after] != [r.item_id for r in before]
    # on the items not rated, the personal model moved the scores along the user's taste
    change = model.infer(unrated) - global_scores
    assert np.corrcoef(change, axis[unrated])[0, 1] > 0.6
    assert device.status().personalized


def test_personal_parameters_survive_a_restart(make_package, tmp_path):
    device = _installed(tmp_path, make_package(**BASE))
    _strong_tastes(device)
    device.personalize()
    recommendations = device.recommend(k=5)
    stored = device.store.user_params()
    device.close()
    with Device(tmp_path / "device") as again:
        params = again.store.user_params()
        np.testing.assert_array_equal(params.embedding, stored.embedding)
        assert params.bias == stored.bias and params.num_ratings == 12
        np.testing.assert_array_equal(again.model.get_weights().user.embedding, stored.embedding)
        assert again.recommend(k=5) == recommendations


def test_upgrade_with_the_same_dim_keeps_the_personal_parameters(make_package, tmp_path):
    base, newer = make_package(**BASE), make_package(**NEWER_SAME_DIM)
    device = _installed(tmp_path, base)
    first = device.status().model_version
    _strong_tastes(device)
    device.personalize()
    stored = device.store.user_params()
    report = device.install(newer)
    assert report.previous_version == first and report.model_version != first
    assert report.params == "kept" and not report.dim_changed and report.unknown_ratings == 0
    assert "personal parameters kept" in "\n".join(report.lines())
    kept = device.store.user_params()
    np.testing.assert_array_equal(kept.embedding, stored.embedding)
    assert kept.model_version == first  # still says which model they were fitted with
    with Device(tmp_path / "device") as again:
        assert again.status().model_version == report.model_version
        np.testing.assert_array_equal(again.model.get_weights().user.embedding, stored.embedding)
        assert again.status().installed_versions == tuple(sorted([first, report.model_version]))


def test_a_dimension_change_is_reported_and_the_parameters_refitted(make_package, tmp_path):
    base, newer, wider = make_package(**BASE), make_package(**NEWER_SAME_DIM), make_package(**WIDER)
    device = _installed(tmp_path, base)
    oldest = device.status().model_version
    ratings = _strong_tastes(device)
    device.personalize()
    previous = device.install(newer).model_version
    report = device.install(wider)
    assert report.dim_changed and report.params == "refit" and report.params_dim == 4 and report.dim == 6
    assert report.refit_num_ratings == 12
    text = "\n".join(report.lines())
    assert "dimension changed from 4 to 6" in text and "refitted them from 12 stored ratings" in text
    params = device.store.user_params()
    assert params.dim == 6 and params.model_version == report.model_version and params.num_ratings == 12
    # the refit is exactly what the new model fits from the stored ratings
    model = LiteModel.load(wider)
    ids = np.array([(raw - 1000) // 7 for raw in ratings], np.int32)
    fit = model.personalize(ids, np.array(list(ratings.values()), np.float32))
    np.testing.assert_allclose(params.embedding, fit.user.embedding, rtol=1e-6)
    # older model folders go only after the switch; the previous one is kept
    assert report.removed_versions == (oldest,)
    assert device.status().installed_versions == tuple(sorted([previous, report.model_version]))
    assert device.status().personalized


def test_an_upgrade_that_knows_none_of_the_rated_items_keeps_the_ratings_and_drops_the_parameters(
        make_package, tmp_path):
    device = _installed(tmp_path, make_package(**BASE))
    unknown_later = [1000 + 7 * k for k in range(20, 30)]
    for item_id in unknown_later:
        device.rate(item_id, 4 if item_id % 2 else 2)
    device.personalize()
    report = device.install(make_package(**SMALLER_WIDER))
    assert report.params == "dropped" and report.dim_changed
    assert report.unknown_ratings == 10 and report.num_ratings == 10
    text = "\n".join(report.lines())
    assert "cannot be refitted" in text and "10 of 10 stored ratings are for items this model does not know" in text
    assert device.store.user_params() is None
    assert sorted(device.ratings()) == unknown_later  # kept for a later model
    with pytest.raises(DeviceError, match="10 stored, none usable by it"):
        device.personalize()
    assert len(device.recommend(k=50)) == 20  # unknown ratings exclude nothing; global model
    device.rate(1000, 5)
    assert device.personalize().ignored_ratings == 10


def test_a_fresh_device_has_no_model_and_says_how_to_get_one(tmp_path):
    device = Device(tmp_path / "fresh")
    with pytest.raises(DeviceError, match="no model installed in .*fresh; run `fedrec-edge install PACKAGE_DIR` first"):
        device.recommend()
    assert "model: none installed" in device.status().lines()


def test_reinstalling_the_active_model_changes_nothing_and_repairs_a_damaged_copy(make_package, tmp_path):
    package = make_package(**BASE)
    device = _installed(tmp_path, package)
    version = device.status().model_version
    device.rate(1000, 5)
    device.personalize()
    again = device.install(package)
    assert again.already_active and not again.repaired and again.params == "kept"
    installed = tmp_path / "device" / "models" / version / "model.tflite"
    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    installed.write_bytes(bytes(data))
    with Device(tmp_path / "device") as restarted:
        with pytest.raises(DeviceError, match=f"the active model {version} cannot be used .*sha256"):
            restarted.recommend()
        status = restarted.status()
        assert status.model_version == version and "sha256" in status.model_error
        repaired = restarted.install(package)
        assert repaired.already_active and repaired.repaired
        assert len(restarted.recommend(k=3)) == 3
        assert restarted.store.user_params().num_ratings == 1


def test_after_personalize_recommendations_follow_the_ranking_head_and_show_stars(make_package, tmp_path):
    device = _installed(tmp_path, make_package(**BASE))
    ratings = _strong_tastes(device)
    device.personalize()
    stored = device.store.user_params()
    assert stored.implicit is not None and np.any(stored.implicit != 0)
    recommendations = device.recommend(k=5)
    model = device.model
    table = model.get_weights().global_weights.item_embeddings
    index = model.manifest.dense_index
    unrated = [d for d in range(30) if model.manifest.item_ids[d] not in ratings]
    by_ranking = sorted(unrated, key=lambda d: -float(table[d] @ stored.implicit))[:5]
    assert [index[r.item_id] for r in recommendations] == by_ranking
    np.testing.assert_allclose([r.rank_score for r in recommendations], [table[d] @ stored.implicit for d in by_ranking],
                               rtol=1e-5)
    stars = model.infer(np.array(by_ranking, np.int32))
    np.testing.assert_allclose([r.score for r in recommendations], np.clip(stars, 1, 5), rtol=1e-6)


def test_parameters_from_before_the_ranking_head_are_refit_at_the_next_install(make_package, tmp_path):
    from edge_client.store import StoredUserParams

    device = _installed(tmp_path, make_package(**BASE))
    _strong_tastes(device)
    fit = device.personalize()
    old = device.store.user_params()
    device.store.put_user_params(StoredUserParams(old.embedding, old.bias, old.model_version, fit.num_ratings))
    assert device.store.user_params().implicit is None  # what a schema-1 device holds
    report = device.install(make_package(**NEWER_SAME_DIM))
    assert report.params == "refit" and report.refit_num_ratings == 12
    assert device.store.user_params().implicit is not None


def test_a_cold_personalization_fits_without_xnnpack_and_the_next_use_holds_the_stored_fit(make_package, tmp_path):
    package = make_package(**BASE)
    device = _installed(tmp_path, package)
    ratings = _strong_tastes(device)
    device.close()
    cold = Device(tmp_path / "device")
    report = cold.personalize()  # one-shot: an interpreter without the XNNPACK delegate, not kept
    assert cold._model is None
    stored = cold.store.user_params()
    # the same fit as the accelerated interpreter's, within the float tolerance of its kernels
    model = LiteModel.load(package)
    ids = np.array([(raw - 1000) // 7 for raw in ratings], np.int32)
    fit = model.personalize(ids, np.array(list(ratings.values()), np.float32))
    np.testing.assert_allclose(stored.embedding, fit.user.embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored.implicit, fit.user.implicit, rtol=1e-5, atol=1e-6)
    assert report.loss == pytest.approx(fit.loss, rel=1e-5)
    # the next use loads the accelerated model, holding exactly what was stored
    user = cold.model.get_weights().user
    np.testing.assert_array_equal(user.embedding, stored.embedding)
    np.testing.assert_array_equal(user.implicit, stored.implicit)
    assert float(user.bias) == np.float32(stored.bias)
    cold.close()
