import numpy as np
import pytest
from sklearn import metrics as skm

from tasks.judging.metrics import (
    classification_metrics,
    confusion,
    expected_calibration_error,
    per_class_table,
    reliability_table,
    top_k_accuracy,
)


@pytest.fixture
def random_predictions():
    rng = np.random.default_rng(0)
    n, c = 300, 5
    y_true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y_true] += 1.0  # better than chance, not perfect
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, proba


def test_metrics_equal_scikit_learn(random_predictions):
    y_true, proba = random_predictions
    y_pred = proba.argmax(1)
    got = classification_metrics(y_true, proba, top_k=3, bins=10)
    assert got["acc"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert got["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        assert got[f"{avg}_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average=avg))
        assert got[f"{avg}_recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average=avg))
        assert got[f"{avg}_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average=avg))
    assert got["top3_acc"] == pytest.approx(skm.top_k_accuracy_score(y_true, proba, k=3))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, proba))
    assert 0 < got["acc"] < got["top3_acc"] < 1


def test_per_class_and_confusion_equal_scikit_learn(random_predictions):
    y_true, proba = random_predictions
    y_pred = proba.argmax(1)
    classes = list("abcde")
    table = per_class_table(y_true, y_pred, classes)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred)
    assert table["class"].tolist() == classes
    np.testing.assert_allclose(table[["precision", "recall", "f1"]].to_numpy().T, [p, r, f])
    assert table["support"].tolist() == s.tolist()
    counts, normalized = confusion(y_true, y_pred, 5)
    np.testing.assert_array_equal(counts, skm.confusion_matrix(y_true, y_pred))
    np.testing.assert_allclose(normalized, skm.confusion_matrix(y_true, y_pred, normalize="true"))


def test_class_missing_from_the_split_gives_zero_rows_not_nan():
    y_true = np.array([0, 0, 1])
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1]])
    got = classification_metrics(y_true, proba, top_k=2, bins=5)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=[0, 1, 2]))
    counts, normalized = confusion(y_true, proba.argmax(1), 3)
    assert counts[2].sum() == 0 and not np.isnan(normalized).any()
    assert normalized[0].tolist() == [0.5, 0.0, 0.5]


def test_top_k_accepts_two_classes_and_k_beyond_the_classes():
    y_true = np.array([0, 1, 1])
    proba = np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert top_k_accuracy(y_true, proba, 1) == pytest.approx(2 / 3)
    assert top_k_accuracy(y_true, proba, 3) == 1.0


def test_ece_hand_computed_example():
    # 4 bins of width 0.25. Confidences: 0.4 (bin 1), 0.6, 0.7 (bin 2), 0.9, 0.9 (bin 3).
    proba = np.array([[0.3, 0.3, 0.4], [0.6, 0.4, 0.0], [0.7, 0.2, 0.1], [0.9, 0.1, 0.0], [0.05, 0.9, 0.05]])
    # predicted: 2, 0, 0, 0, 1
    y_true = np.array([2, 1, 0, 0, 0])
    # bin 1: conf 0.4, right -> gap 0.6, 1 sample
    # bin 2: conf (0.6+0.7)/2 = 0.65, acc 1/2 -> gap 0.15, 2 samples
    # bin 3: conf 0.9, acc 1/2 -> gap 0.4, 2 samples
    expected = (1 * 0.6 + 2 * 0.15 + 2 * 0.4) / 5
    assert expected_calibration_error(y_true, proba, bins=4) == pytest.approx(expected)


def test_reliability_bins():
    proba = np.array([[0.3, 0.3, 0.4], [0.6, 0.4, 0.0], [0.7, 0.2, 0.1], [0.9, 0.1, 0.0], [0.05, 0.9, 0.05]])
    y_true = np.array([2, 1, 0, 0, 0])
    table = reliability_table(y_true, proba, bins=4)
    assert table["lower"].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert table["upper"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert table["count"].tolist() == [0, 1, 2, 2]
    assert np.isnan(table["confidence"][0]) and np.isnan(table["accuracy"][0])
    np.testing.assert_allclose(table["confidence"][1:], [0.4, 0.65, 0.9])
    np.testing.assert_allclose(table["accuracy"][1:], [1.0, 0.5, 0.5])


def test_perfectly_calibrated_predictions_have_near_zero_ece():
    rng = np.random.default_rng(1)
    n = 20000
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < confidence  # right exactly as often as claimed
    y_true = np.where(correct, 0, 1)
    proba = np.stack([confidence, 1 - confidence], axis=1)
    assert expected_calibration_error(y_true, proba, bins=10) < 0.02
    overconfident = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)
    assert expected_calibration_error(np.where(rng.uniform(size=n) < 0.7, 0, 1), overconfident, 10) == pytest.approx(
        0.29, abs=0.02
    )
