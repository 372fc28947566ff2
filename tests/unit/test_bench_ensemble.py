"""bench.ensemble's --groups scoring: disjoint groups of seeds, each as its own ensemble with and without
the HOG member (the last one), weights chosen on val as `imgcls ensemble` chooses them."""

from __future__ import annotations

import numpy as np

from bench.ensemble import group_scores


def _onehot(labels, classes=3, sure=0.9):
    p = np.full((len(labels), classes), (1 - sure) / (classes - 1))
    p[np.arange(len(labels)), labels] = sure
    return p


def test_groups_score_each_seed_group_with_and_without_the_hog_member():
    y = np.array([0, 1, 2, 0, 1, 2])
    wrong_on_0 = y.copy()
    wrong_on_0[0] = 1
    right = _onehot(y)
    # seeds 0, 1 miss image 0; seeds 2, 3 are right; the HOG member (last) is right but less sure
    test = np.stack([_onehot(wrong_on_0), _onehot(wrong_on_0), right, right, _onehot(y, sure=0.99)])
    val = np.stack([right] * 5)  # val cannot tell them apart: equal weights
    rows = group_scores(val, y, test, y, group=2)
    assert [r["seeds"] for r in rows] == [[0, 1], [2, 3]]
    first, second = rows
    assert first["cnn_only_test_wrong"] == 1 and first["with_hog_test_wrong"] == 1  # 1/3 weight is not enough
    assert second["cnn_only_test_wrong"] == 0 and second["with_hog_test_wrong"] == 0
    assert first["cnn_only_weights"] == first["with_hog_weights"] == "equal"
    # seed 0 alone with the HOG member: at weight 1/2 its 0.99 outweighs seed 0's 0.9 on the wrong class
    rows = group_scores(val[[0, 4]], y, test[[0, 4]], y, group=1)
    assert rows[0]["cnn_only_test_wrong"] == 1 and rows[0]["with_hog_test_wrong"] == 0
