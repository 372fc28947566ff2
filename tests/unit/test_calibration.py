"""Temperature scaling: fitted on deliberately mis-calibrated logits, applied the same way by the
Predictor and the ONNX graph, and fitted by the train stage on the val split and saved with the model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from models.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature, negative_log_likelihood, probabilities
from models.networks import build_network
from models.predictor import Predictor, load_predictor
from tasks.judging.metrics import expected_calibration_error
from tasks.train import Params, calibrate, run
from tests.helpers.prepared_store import make_project

BINS = 15


def synthetic(n: int = 3000, classes: int = 5, scale: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model right ~75% of the time; `scale` sets how sure it is (large: over-confident)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 1.6
    return logits * scale, labels


def test_over_confident_logits_get_a_temperature_above_one_and_a_lower_ece():
    logits, labels = synthetic(scale=8.0)
    t = fit_temperature(logits, labels)
    before = expected_calibration_error(labels, probabilities(logits, 1.0), BINS)
    after = expected_calibration_error(labels, probabilities(logits, t), BINS)
    assert t > 1.0 and before > 0.15 and after < before / 3
    assert negative_log_likelihood(logits, labels, t) < negative_log_likelihood(logits, labels, 1.0)
    # the minimum: nudging T either way only makes the NLL worse
    for nudged in (t * 0.95, t * 1.05):
        assert negative_log_likelihood(logits, labels, nudged) > negative_log_likelihood(logits, labels, t)
    # argmax, hence accuracy, is untouched
    np.testing.assert_array_equal(probabilities(logits, t).argmax(1), logits.argmax(1))


def test_under_confident_logits_get_a_temperature_below_one():
    logits, labels = synthetic(scale=0.3)
    t = fit_temperature(logits, labels)
    assert t < 1.0
    assert expected_calibration_error(labels, probabilities(logits, t), BINS) < expected_calibration_error(
        labels, probabilities(logits, 1.0), BINS
    )


def test_temperature_stays_within_its_bounds():
    labels = np.arange(200) % 4
    coin = np.eye(4)[(labels + 1) % 4] * 50.0  # always wrong and sure: the NLL keeps falling as T grows
    assert fit_temperature(coin, labels) == pytest.approx(MAX_TEMPERATURE, rel=1e-4)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_a_val_split_without_errors_gives_laplace_confidence_not_certainty():
    """Every val image right: the NLL keeps falling as T -> 0 and has no minimum. T is chosen so that
    the mean top probability is (n + 1) / (n + 2) instead of the lower bound, which made wrong answers
    certain (digits: 6 of 8 seeds)."""
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 4
    separable = np.eye(4)[labels] * rng.uniform(1.0, 6.0, (200, 1)) + rng.normal(0, 0.3, (200, 4))
    separable[np.arange(200), labels] += 2.0  # right every time, with margins of different sizes
    t = fit_temperature(separable, labels)
    assert MIN_TEMPERATURE * 2 < t < MAX_TEMPERATURE
    assert probabilities(separable, t).max(axis=1).mean() == pytest.approx(201 / 202, abs=1e-5)
    # one wrong image: the ordinary NLL fit again (here softer than the Laplace T: one sure mistake)
    one_wrong = separable.copy()
    one_wrong[0] = np.roll(one_wrong[0], 1)
    fitted = fit_temperature(one_wrong, labels)
    assert fitted > t * 1.05
    for other in (fitted * 0.95, fitted * 1.05, t):
        assert negative_log_likelihood(one_wrong, labels, fitted) < negative_log_likelihood(one_wrong, labels, other)
    # flat logits that can never reach the target: the lower bound
    assert fit_temperature(np.eye(4)[labels] * 1e-3, labels) == pytest.approx(MIN_TEMPERATURE)


def test_two_views_are_fitted_as_the_predictor_averages_them():
    logits, labels = synthetic(scale=6.0)
    mirror = logits + np.random.default_rng(1).normal(0, 2.0, logits.shape)
    views = np.stack([logits, mirror])
    t = fit_temperature(views, labels)
    assert t > 1.0
    expected = (torch.softmax(torch.from_numpy(logits) / t, 1) + torch.softmax(torch.from_numpy(mirror) / t, 1)) / 2
    np.testing.assert_allclose(probabilities(views, t), expected.numpy(), atol=1e-12)


def test_onnx_graph_applies_the_temperature_like_the_predictor(tmp_path):
    """With test-time flip, so the division is checked on both views (each export costs ~20 s on CPU)."""
    from models.onnx_export import check_parity, export_onnx, metadata, onnx_proba, parity, session

    torch.manual_seed(0)
    stats = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.25], "test_time_flip": True}
    network = build_network("resnet_tiny", 3, 1)
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1)).astype(np.uint8)
    plain = Predictor(network, ["a", "b", "c"], dict(stats))
    scaled = Predictor(network, ["a", "b", "c"], stats | {"temperature": 0.2})
    sess = session(export_onnx(scaled, tmp_path / "m.onnx"))
    report = parity(scaled, sess, images)
    check_parity(report, 1e-4)
    assert metadata(sess)["temperature"] == pytest.approx(0.2)
    # the graph really divides: it is far from the unscaled model
    assert np.abs(onnx_proba(sess, images) - plain.predict_proba(images)).max() > 1e-2


def test_train_fits_the_temperature_on_val_logs_it_and_saves_it_with_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    paths = make_project(tmp_path)
    params = Params(
        epochs=2, batch_size=8, lr=0.01, num_workers=0, checkpoint_every_n_steps=3, early_stopping_patience=None
    )
    assert params.calibrate  # on by default
    summary = run(params, paths)

    stats = json.loads((Path(paths.train_dir) / "model" / "artifacts" / "stats.json").read_text())
    t = stats["temperature"]
    assert MIN_TEMPERATURE <= t <= MAX_TEMPERATURE
    predictor = load_predictor(paths.train_dir)
    assert predictor.temperature == pytest.approx(t)
    metrics = mlflow.MlflowClient().get_run(summary["run_id"]).data.metrics
    assert metrics["val/temperature"] == pytest.approx(t)
    # 18 val images: the NLL-optimal T need not lower a 15-bin ECE there, so only that both are recorded
    assert 0 <= metrics["val/ece_calibrated"] <= 1 and 0 <= metrics["val/ece_uncalibrated"] <= 1

    # the step on its own: off, it leaves the stats alone and logs nothing
    class Data:
        stats = {"image_size": 16}

    assert calibrate(params.model_copy(update={"calibrate": False}), None, Data, Path(paths.prepared)) is None
    assert Data.stats == {"image_size": 16}
