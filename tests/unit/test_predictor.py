import numpy as np
import torch
from torch import nn

from models.predictor import Predictor


def predictor(flip: bool | None) -> Predictor:
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8, 3))  # sees where things are: not mirror-invariant
    stats = {"image_size": 8, "channels": 1, "mean": [0.5], "std": [0.25]}
    if flip is not None:
        stats["test_time_flip"] = flip
    return Predictor(network, ["a", "b", "c"], stats)


def test_test_time_flip_averages_the_image_and_its_mirror():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    mirrors = images[:, :, ::-1].copy()
    plain, flipped = predictor(False), predictor(True)
    expected = (plain.predict_proba(images) + plain.predict_proba(mirrors)) / 2
    np.testing.assert_allclose(flipped.predict_proba(images), expected, atol=1e-6)
    assert not np.allclose(flipped.predict_proba(images), plain.predict_proba(images), atol=1e-3)
    # a picture and its mirror get the same answer
    np.testing.assert_allclose(flipped.predict_proba(mirrors), flipped.predict_proba(images), atol=1e-6)


def test_models_saved_before_the_option_predict_without_flip():
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    assert not predictor(None).test_time_flip
    np.testing.assert_allclose(predictor(None).predict_proba(images), predictor(False).predict_proba(images))


def calibrated(flip: bool, temperature: float | None) -> Predictor:
    base = predictor(flip)
    stats = dict(base.stats) if temperature is None else base.stats | {"temperature": temperature}
    return Predictor(base.network, base.classes, stats)


def test_temperature_divides_the_logits_of_every_view_before_the_softmax():
    images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 1)).astype(np.uint8)
    for flip in (False, True):
        plain, scaled = calibrated(flip, None), calibrated(flip, 2.5)
        logits = torch.from_numpy(plain.logits(images))  # [views, N, C], no temperature
        assert logits.shape == (2 if flip else 1, 6, 3)
        expected = torch.softmax(logits / 2.5, dim=2).mean(0).numpy()
        np.testing.assert_allclose(scaled.predict_proba(images), expected, atol=1e-6)
        assert scaled.predict_proba(images).max(1).mean() < plain.predict_proba(images).max(1).mean()
        if not flip:  # one view: softer, never a different answer (a mean of two softmaxes can change its argmax)
            np.testing.assert_array_equal(scaled.predict_proba(images).argmax(1), plain.predict_proba(images).argmax(1))


def test_models_saved_before_temperature_predict_exactly_as_before():
    images = np.random.default_rng(3).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    for flip in (False, True):
        old = calibrated(flip, None)
        assert "temperature" not in old.stats and old.temperature == 1.0
        # the computation as it was before temperature existed, bit for bit
        x = torch.from_numpy(((images.astype(np.float32) - old._mean) / old._std).transpose(0, 3, 1, 2).copy())
        with torch.inference_mode():
            before = torch.softmax(old.network(x).float(), dim=1)
            if flip:
                before = (before + torch.softmax(old.network(x.flip(3)).float(), dim=1)) / 2
        np.testing.assert_array_equal(old.predict_proba(images), before.numpy())
        np.testing.assert_array_equal(calibrated(flip, 1.0).predict_proba(images), before.numpy())


def test_a_temperature_that_is_not_a_positive_number_is_refused():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        try:
            calibrated(False, bad)
        except ValueError as exc:
            assert "temperature" in str(exc)
        else:
            raise AssertionError(f"temperature {bad} accepted")
