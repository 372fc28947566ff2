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
