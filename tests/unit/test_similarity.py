"""The near-duplicate rule (tasks.checks.similarity): resized, shifted and re-encoded copies are
near-duplicates, two different pictures of one kind are not, and clean and split use the same rule."""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from bench.planted import NEAR_DUPLICATE_KINDS, encode, near_duplicate
from tasks.checks.phash import aligned_copy, aligned_hash, hamming
from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, DEFAULT_RADIUS, near_duplicate_pairs, similarity
from tasks.common.images import decode


def garment(seed: int) -> np.ndarray:
    """A 28x28 textured shape on black, like a Fashion-MNIST picture; seeds differ in texture and outline."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    half_width = 6 + 2 * np.sin(yy / 5 + rng.uniform(0, 1)) + rng.uniform(-0.5, 0.5)
    shape = (np.abs(xx - 13.5) < half_width) & (yy > 3 + rng.integers(0, 2)) & (yy < 25)
    texture = gaussian_filter(rng.normal(0, 1, (28, 28)), 1.2)
    pixels = 160 + 400 * texture
    return np.where(shape, np.clip(pixels, 40, 255), 0).astype(np.uint8)


def copies_of(*arrays_or_bytes) -> np.ndarray:
    out = []
    for item in arrays_or_bytes:
        img = decode(item) if isinstance(item, bytes) else Image.fromarray(item)
        out.append(aligned_copy(img.convert("L")).ravel())
    return np.stack(out)


def resized(arr: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((side, side), Image.Resampling.BICUBIC))


def test_resized_shifted_and_reencoded_copies_are_near_duplicates():
    arr = garment(0)
    shifted = np.zeros_like(arr)
    shifted[:, 1:] = arr[:, :-1]
    jpeg = encode(Image.fromarray(arr), "JPEG", quality=75)
    copies = copies_of(arr, resized(arr, 32), shifted, jpeg, resized(resized(arr, 24), 28))
    pairs = np.array([[0, k] for k in range(1, len(copies))])
    sims = similarity(copies, pairs)
    assert (sims >= DEFAULT_MIN_SIMILARITY).all(), sims
    hashes = np.array([aligned_hash(c.reshape(32, 32)) for c in copies], dtype=np.uint64)
    assert (hamming(hashes[:1], hashes[1:]) <= DEFAULT_RADIUS).all()
    found = near_duplicate_pairs(hashes, copies, DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY)
    assert {(0, k) for k in range(1, len(copies))} <= set(map(tuple, found.tolist()))  # (copies pair each other too)


def test_two_different_pictures_of_one_kind_are_not_near_duplicates():
    looks = [garment(seed) for seed in range(1, 7)]
    copies = copies_of(*looks)
    pairs = np.array([[i, j] for i in range(len(looks)) for j in range(i + 1, len(looks))])
    sims = similarity(copies, pairs)
    assert sims.max() < DEFAULT_MIN_SIMILARITY, sims
    assert sims.min() > 0.3  # look-alikes: the same kind of shape, correlated, just not copies


def test_similarity_ignores_brightness_and_contrast_but_not_content():
    arr = garment(0)
    levels = np.clip(arr * 0.8 + 20, 0, 255).astype(np.uint8)
    flipped = arr[::-1].copy()
    sims = similarity(copies_of(arr, levels, flipped), np.array([[0, 1], [0, 2]]))
    assert sims[0] > 0.999 and sims[1] < 0.9


def test_a_flat_image_is_like_nothing():
    flat = np.full((28, 28), 77, np.uint8)
    assert similarity(copies_of(flat, garment(0)), np.array([[0, 1]]))[0] < 0.5


def test_every_planted_kind_writes_a_decodable_same_size_or_resized_copy():
    rng = np.random.default_rng(0)
    for kind in NEAR_DUPLICATE_KINDS:
        img = Image.open(io.BytesIO(near_duplicate(garment(0), kind, rng)))
        assert 20 <= img.width <= 40, kind


@pytest.mark.parametrize("stage_param", ["clean", "split"])
def test_clean_and_split_default_to_the_same_rule(stage_param):
    from tasks import clean, split

    if stage_param == "clean":
        p = clean.Params()
        assert (p.near_duplicate_distance, p.near_duplicate_min_similarity) == (DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY)
    else:
        p = split.Params()
        assert (p.group_radius, p.group_min_similarity) == (DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY)
