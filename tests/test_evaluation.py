"""Ranking evaluation: the leave-one-out protocol, negative seeds, full-catalog metrics, labels."""

from __future__ import annotations

import numpy as np
import pytest

from tff_pipeline import evaluation
from tff_pipeline.data import DatasetSplit, RankingTask, Ratings, Vocabulary, synthetic_split
from tff_pipeline.data.splits import LOO_PROTOCOL, leave_latest_out, leave_two_latest_out


def _ratings(rows):
    users, items, stamps = zip(*rows)
    return Ratings(users=users, items=items, ratings=[4.0] * len(rows), timestamps=stamps)


def test_loo_validation_holds_out_the_second_latest_and_never_trains_on_the_latest():
    everything = _ratings([(0, 0, 10), (0, 1, 30), (0, 2, 20), (1, 3, 5), (1, 4, 6), (1, 0, 7), (2, 1, 1)])
    train, test = leave_latest_out(everything)
    assert sorted(zip(test.users.tolist(), test.items.tolist())) == [(0, 1), (1, 0)]
    train_val, val = leave_two_latest_out(everything)
    assert sorted(zip(val.users.tolist(), val.items.tolist())) == [(0, 2), (1, 4)]
    assert not {(0, 1), (1, 0)} & set(zip(train_val.users.tolist(), train_val.items.tolist()))
    assert (2, 1) in set(zip(train_val.users.tolist(), train_val.items.tolist()))  # one rating: stays in train


def test_loo_splits_sample_three_negative_sets_of_never_interacted_items_and_say_their_protocol():
    loo = synthetic_split(seed=1, split="loo", num_users=60, num_items=120, num_negatives=20)
    val = synthetic_split(seed=1, split="loo-val", num_users=60, num_items=120, num_negatives=20)
    assert loo.ranking.protocol == LOO_PROTOCOL and "validation" in val.ranking.protocol
    assert "not the standard protocol" in synthetic_split(seed=1, num_users=60, num_items=120,
                                                          num_negatives=20).ranking.protocol
    task = loo.ranking
    assert task.negatives.shape == (3, len(task.users), 20)
    assert not np.array_equal(task.negatives[0], task.negatives[1])
    indptr, items = loo.interactions
    for s in range(3):
        for row, user in enumerate(task.users):
            interacted = set(items[indptr[user]:indptr[user + 1]].tolist())
            assert not interacted & set(task.negatives[s, row].tolist())
    # the validation positives are never the test positives, and the test item is no negative there
    test_item = dict(zip(task.users.tolist(), task.positives.tolist()))
    for row, user in enumerate(val.ranking.users.tolist()):
        assert val.ranking.positives[row] != test_item.get(user)
        assert test_item.get(user) not in val.ranking.negatives[:, row].tolist()


def _tiny_split(negatives) -> DatasetSplit:
    train = _ratings([(0, 0, 1), (0, 1, 2), (1, 2, 1)])
    test = _ratings([(0, 5, 3), (1, 6, 3)])
    vocab = Vocabulary(user_raw_ids=np.arange(2), item_raw_ids=np.arange(8))
    ranking = RankingTask(users=[0, 1], positives=[5, 6], negatives=negatives, protocol="test")
    return DatasetSplit("tiny", vocab, train, test, ranking, (1.0, 5.0))


def test_sampled_metrics_average_over_negative_sets_and_ties_count_against():
    split = _tiny_split([[[2, 3], [0, 3]], [[7, 3], [7, 4]]])
    scores = np.array([[0, 0, 9, 1, 0, 5, 0, 5],     # user 0: positive 5 scores 5
                       [0, 0, 0, 8, 0, 0, 2, 9]], float)  # user 1: positive 6 scores 2
    score = lambda u, i: scores[u, i]  # noqa: E731
    # set 0: user 0 rank 1 (item 2 beats it), user 1 rank 1 (item 3); set 1: user 0 rank 1 (tie with 7),
    # user 1 rank 1 (item 7)
    got = evaluation.ranking_metrics(score, split, k=1)
    assert got == {"hr@1": 0.0, "ndcg@1": 0.0}
    got = evaluation.ranking_metrics(score, split, k=2)
    assert got["hr@2"] == 1.0 and got["ndcg@2"] == pytest.approx(1 / np.log2(3))


def test_full_catalog_ranks_against_every_never_interacted_item():
    split = _tiny_split([[[2, 3], [0, 3]]])
    scores = np.array([[9, 9, 0, 1, 0, 5, 0, 6],     # user 0 interacted 0, 1 (train) and 5 (positive)
                       [0, 0, 9, 8, 0, 0, 2, 9]], float)  # user 1 interacted 2 and 6 (positive)
    got = evaluation.full_catalog_metrics(lambda u, i: scores[u, i], split, k=2)
    # user 0: items 0, 1 are excluded though they score 9; only item 7 (6) beats 5 -> rank 1, a hit
    # user 1: items 3 (8) and 7 (9) beat 2; item 2 is excluded -> rank 2, a miss at k=2
    assert got["recall@2"] == 0.5
    assert got["ndcg@2"] == pytest.approx(0.5 / np.log2(3))
