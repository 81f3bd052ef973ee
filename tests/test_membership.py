"""User-level membership inference (`tff_pipeline.membership`, issue 18 item 3): the held-out users
leave every part of the split, the per-user loss is each user's own mean squared error, and the
attack's AUC and advantage are what their definitions say."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tff_pipeline import membership
from tff_pipeline.data import synthetic_split


def _split():
    return synthetic_split(seed=2, num_users=50, num_items=40, num_negatives=5, mean_ratings_per_user=10)


def test_held_out_users_leave_train_test_and_ranking_and_the_shapes_stay():
    split = _split()
    members, held_out = membership.hold_out_users(split, seed=0)
    users = np.unique(split.train.users)
    assert held_out.size == round(0.2 * users.size) and np.isin(held_out, users).all()
    for part in (members.train.users, members.test.users, members.ranking.users):
        assert not np.isin(part, held_out).any()
    kept = ~np.isin(split.train.users, held_out)
    assert len(members.train) == int(kept.sum())  # members keep every rating
    assert members.ranking.negatives.shape[1] == len(members.ranking)
    assert members.num_users == split.num_users and members.num_items == split.num_items
    again = membership.hold_out_users(split, seed=0)[1]
    assert np.array_equal(again, held_out) and not np.array_equal(membership.hold_out_users(split, seed=1)[1], held_out)
    with pytest.raises(ValueError, match="between 0 and 1"):
        membership.hold_out_users(split, fraction=1.0, seed=0)


def test_the_per_user_loss_is_each_users_mean_squared_error():
    split = _split()
    offsets = np.random.default_rng(3).normal(size=split.num_users)

    lookup = {(int(u), int(i)): float(r) for u, i, r in zip(split.train.users, split.train.items, split.train.ratings)}

    def score(users, items):  # each rating, off by its user's own constant
        return np.array([lookup[(int(u), int(i))] for u, i in zip(users, items)]) + offsets[users]

    losses = membership.per_user_loss(score, split)
    rated = np.unique(split.train.users)
    np.testing.assert_allclose(losses[rated], np.square(offsets[rated]), rtol=1e-5)
    assert np.isnan(np.delete(losses, rated)).all()


def test_the_attack_reports_auc_and_advantage_by_their_definitions():
    losses = np.array([0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 0.35])
    held_out = np.array([4, 5, 6, 7])  # non-members: higher losses, but user 7 overlaps the members
    found = membership.loss_threshold_attack(losses, held_out, epsilon=None, delta=1e-5)
    # Of the 16 member/non-member pairs, only (member 0.4, non-member 0.35) is ordered wrongly.
    assert found["auc"] == pytest.approx(15 / 16)
    assert found["advantage"] == pytest.approx(0.75)  # threshold 0.3: TPR 3/4, FPR 0
    assert (found["members"], found["non_members"]) == (4, 4) and found["advantage_bound"] == 1.0
    rng = np.random.default_rng(0)
    alike = membership.loss_threshold_attack(rng.normal(1, 0.1, 4000), np.arange(2000), epsilon=1.0, delta=1e-5)
    assert abs(alike["auc"] - 0.5) < 0.03 and alike["advantage"] < 0.06
    # Hanley-McNeil at AUC 0.5: sqrt((1/4 + (n1 - 1)/12 + (n2 - 1)/12) / (n1 n2)), about sqrt(1/(3 n))
    # for n1 = n2 = n; and the spread of AUCs over many equal-sized draws of the null agrees with it.
    assert membership.auc_standard_error(0.5, 2000, 2000) == pytest.approx(math.sqrt((0.25 + 3998 / 12) / 2000**2))
    null_aucs = [membership.loss_threshold_attack(rng.normal(1, 0.1, 400), np.arange(80), epsilon=None,
                                                  delta=1e-5)["auc"] for _ in range(300)]
    assert float(np.std(null_aucs)) == pytest.approx(membership.auc_standard_error(0.5, 320, 80), rel=0.15)
    assert alike["advantage_bound"] == pytest.approx((math.e - 1 + 2e-5) / (math.e + 1))
    with pytest.raises(ValueError, match="both members and held-out"):
        membership.loss_threshold_attack(losses, np.arange(8), epsilon=None, delta=1e-5)


def test_audit_refuses_a_captures_folder_it_cannot_read_before_training(tmp_path, capsys):
    from fedrec_cli.main import main

    def audit() -> tuple[int, str]:
        status = main(["audit", "--captures", str(tmp_path), "--out", str(tmp_path / "out")])
        return status, capsys.readouterr().err

    status, error = audit()
    assert status == 2 and "--captures" in error and "rated_items.json is missing" in error
    (tmp_path / "rated_items.json").write_text(json.dumps({"own_upload_auc": 1.0}))
    status, error = audit()
    assert status == 2 and "does not name its --dp mode" in error
    (tmp_path / "rated_items.json").write_text(json.dumps({"dp": "fixed", "own_upload_auc": 7}))
    status, error = audit()
    assert status == 2 and "own_upload_auc must be a number in [0, 1]" in error
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written
