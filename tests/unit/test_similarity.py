"""The near-duplicate rule (tasks.checks.similarity): resized, shifted and re-encoded copies are
near-duplicates, two different pictures of one kind are not, and clean and split use the same rule."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from bench.planted import NEAR_DUPLICATE_KINDS, encode, near_duplicate, shifted
from tasks.checks import inspection_cache, registration
from tasks.checks.phash import aligned_copy, aligned_hash, hamming
from tasks.checks.registration import (
    MAX_GREY_DIFFERENCE,
    MIN_REGISTERED,
    Ranks,
    ranked_candidates,
    registered,
    shade_verified,
)
from tasks.checks.similarity import (
    DEFAULT_MAX_COLOUR_CHANGE,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_RADIUS,
    SHADE_PREFILTER,
    colours_agree,
    near_duplicate_pairs,
    pairs_with_new,
    similarity,
    zoom_similarity,
)
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


def tinted(gray: np.ndarray, background, ink) -> np.ndarray:
    """The grey picture in colour: `ink` where it is white, `background` where it is black."""
    g = gray.astype(np.float64)[:, :, None] / 255
    return np.rint(np.array(background) + (np.array(ink) - np.array(background)) * g).astype(np.uint8)


def test_colour_tells_apart_two_pictures_that_differ_only_in_colour_and_keeps_adjusted_copies():
    from tasks.checks.quality import band_histograms, colour_offsets

    def offsets(pixels: np.ndarray) -> tuple[float, float, float]:
        return colour_offsets(band_histograms(Image.fromarray(pixels)))

    picture = tinted(garment(1), (150, 60, 60), (120, 150, 90))
    variants = {
        "itself as JPEG": np.asarray(decode(encode(Image.fromarray(picture), "JPEG", quality=70))),
        "brighter": np.clip(picture.astype(int) + 20, 0, 255).astype(np.uint8),
        "less contrast": (picture * 0.75).round().astype(np.uint8),
        "other colours": tinted(garment(1), (60, 90, 150), (150, 120, 90)),
        "its grey copy": np.asarray(Image.fromarray(picture).convert("L").convert("RGB")),
    }
    chroma = np.array([offsets(picture)] + [offsets(v) for v in variants.values()])
    original = np.repeat(chroma[:1], len(variants), axis=0)
    agree = dict(zip(variants, colours_agree(original, chroma[1:], DEFAULT_MAX_COLOUR_CHANGE)))
    assert agree == {
        "itself as JPEG": True,
        "brighter": True,
        "less contrast": True,
        "other colours": False,
        "its grey copy": True,
    }
    # a colour picture's grey copy, like two grey pictures, always agrees; None turns the check off
    assert colours_agree(np.zeros((1, 3)), np.zeros((1, 3)), 0.0).all()
    assert colours_agree(original, chroma[1:], None).all()


def test_the_black_corners_of_a_turned_copy_weigh_less_in_its_aligned_copy(monkeypatch):
    # PIL fills a turned RGB picture's corners with black; on a coloured background they outweighed the
    # low-contrast picture in every comparison (64 px colour Fashion: rotations found 6 -> 9 of 10 on the
    # tuning draw once the corners take the border colour, BENCHMARKS.md)
    import tasks.checks.phash as phash

    shipped = phash.CORNER_BLANK
    colours = [((200, 120, 120), (150, 170, 150)), ((230, 230, 200), (60, 60, 60)), ((90, 160, 220), (200, 100, 40))]
    for background, ink in colours:
        picture = Image.fromarray(tinted(garment(0), background, ink)).resize((64, 64), Image.Resampling.BICUBIC)
        turned = picture.rotate(5.0, resample=Image.Resampling.BICUBIC)
        found = {}
        for blank in (0.0, shipped):
            monkeypatch.setattr(phash, "CORNER_BLANK", blank)
            pair = np.stack([aligned_copy(img.convert("L")).ravel() for img in (picture, turned)])
            found[blank] = similarity(pair, np.array([[0, 1]]))[0]
        assert found[shipped] > found[0.0] + 0.03, (background, ink, found)


def test_resized_shifted_and_reencoded_copies_are_near_duplicates():
    arr = garment(0)
    moved = np.zeros_like(arr)
    moved[:, 1:] = arr[:, :-1]
    jpeg = encode(Image.fromarray(arr), "JPEG", quality=75)
    copies = copies_of(arr, resized(arr, 32), moved, jpeg, resized(resized(arr, 24), 28))
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


def turned_and_cut(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """arr turned by 4 degrees, and arr with 1-2 px cut from each side and resized back."""
    turned = np.asarray(Image.fromarray(arr).rotate(4, resample=Image.Resampling.BICUBIC))
    cut = np.asarray(Image.fromarray(arr[2:27, 1:26]).resize((28, 28), Image.Resampling.BICUBIC))
    return turned, cut


def test_cropped_and_rotated_copies_are_found_by_registration_and_look_alikes_are_not():
    arr = garment(0)
    items = [arr, *turned_and_cut(arr), *[garment(seed) for seed in range(1, 18)]]
    copies = copies_of(*items)
    hashes = np.array([aligned_hash(c.reshape(32, 32)) for c in copies], dtype=np.uint64)
    # the hash rule alone misses both: their shift-tolerant similarity is below its threshold
    assert (similarity(copies, np.array([[0, 1], [0, 2]])) < DEFAULT_MIN_SIMILARITY).all()
    found = set(map(tuple, near_duplicate_pairs(hashes, copies, DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY).tolist()))
    assert {(0, 1), (0, 2)} <= found
    assert all(max(pair) < 3 for pair in found), found  # no look-alike joins anything


def plain_shape(shade: int, half_width: float, length: int) -> np.ndarray:
    """A plain bar (a trouser leg, say): look-alikes differ in shade and a little in size."""
    yy, xx = np.mgrid[0:28, 0:28]
    shape = (np.abs(xx - 13.5) < half_width) & (yy > 2) & (yy < 3 + length)
    return (gaussian_filter(shape.astype(float), 0.7) * shade).astype(np.uint8)


def frame_filling_garment(seed: int) -> np.ndarray:
    """A textured shape that touches the top and bottom edges: moving it uncovers a strip."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    shape = np.abs(xx - 13.5) < 8 + 2 * np.sin(yy / 5 + rng.uniform(0, 1))
    pixels = 160 + 400 * gaussian_filter(rng.normal(0, 1, (28, 28)), 1.2)
    return np.where(shape, np.clip(pixels, 40, 255), 0).astype(np.uint8)


def test_a_copy_moved_2px_is_registered_despite_the_strip_it_uncovered(monkeypatch):
    originals = [frame_filling_garment(seed) for seed in (12, 24)]
    moved = [shifted(arr, 2, 0) for arr in originals]  # two rows cut off, two uncovered rows filled black
    copies = copies_of(*originals, *moved)
    pairs = np.array([[0, 2], [1, 3], [0, 1], [0, 3], [1, 2]])
    assert shade_verified(copies, pairs).tolist() == [True, True, False, False, False]
    # why the fit weights its residuals: unweighted (and blind to aligned_copy's padding, which hides
    # part of the strip in one of the two), the uncovered strip pulls the warp into a zoom
    monkeypatch.setattr(registration, "ROBUST_SCALE", np.inf)
    monkeypatch.setattr(registration, "padding_runs", lambda copies: np.zeros((len(copies), 4), np.int64))
    assert not shade_verified(copies, pairs[:2]).any()


def cropped(arr: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    h, w = arr.shape
    part = Image.fromarray(arr[top : h - bottom, left : w - right])
    return np.asarray(part.resize((w, h), Image.Resampling.BICUBIC))


def test_padding_runs_mark_the_repeated_cut_edge_and_not_a_flat_background():
    touching = copies_of(frame_filling_garment(14))  # centring moved it down: its cut top edge repeats
    assert registration.padding_runs(touching)[0, 0] >= 2
    assert registration.padding_runs(copies_of(garment(0))).tolist() == [[0, 0, 0, 0]]  # black all round


def test_a_crop_of_a_garment_that_fills_its_frame_is_verified_in_either_order(monkeypatch):
    originals = [frame_filling_garment(seed) for seed in (14, 16, 18)]
    copies = copies_of(*originals, *[cropped(arr, 2, 1, 1, 2) for arr in originals], frame_filling_garment(15))
    copy_first = np.array([[3, 0], [4, 1], [5, 2]])
    assert shade_verified(copies, copy_first).all()
    assert shade_verified(copies, copy_first[:, ::-1]).all()
    assert not shade_verified(copies, np.array([[0, 6], [3, 6]])).any()  # a look-alike stays apart
    # without the padding runs the repeated edge counts as a difference, and these crops fail
    monkeypatch.setattr(registration, "padding_runs", lambda copies: np.zeros((len(copies), 4), np.int64))
    assert not shade_verified(copies, copy_first).any()


def test_look_alikes_that_register_onto_each_other_are_told_apart_by_their_shade():
    copies = copies_of(plain_shape(150, 5.0, 22), plain_shape(190, 5.6, 21), plain_shape(120, 4.6, 23))
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    correlation, difference = registered(copies[pairs[:, 0]], copies[pairs[:, 1]])
    assert (correlation >= MIN_REGISTERED).all(), correlation  # registration alone would pair them
    assert (difference > MAX_GREY_DIFFERENCE).all(), difference
    assert not shade_verified(copies, pairs).any()


def test_the_fine_level_runs_only_for_pairs_still_near_after_the_coarse_one(monkeypatch):
    originals = [frame_filling_garment(seed) for seed in range(20, 24)]
    copies = copies_of(
        *originals,
        *[cropped(arr, 2, 1, 1, 2) for arr in originals],
        *[shifted(arr, 2, 0) for arr in originals],
        plain_shape(150, 5.0, 22),
        plain_shape(190, 5.6, 21),
    )
    copy_pairs = [[k, 4 + k] for k in range(4)] + [[k, 8 + k] for k in range(4)]
    pairs = np.array(copy_pairs + [[0, 1], [2, 3], [5, 6], [12, 13]])  # then look-alikes
    # what shade_verified found before the coarse check: the full registration for every pair
    a, b = copies[pairs[:, 0]].astype(np.float32), copies[pairs[:, 1]].astype(np.float32)
    runs_a, runs_b = registration.padding_runs(a), registration.padding_runs(b)
    p = registration.register(a, b, runs_a=runs_a, runs_b=runs_b)
    blurred = [registration._blur(x, registration._COMPARE_SIGMA) for x in (a, b)]
    full = np.zeros(len(pairs), dtype=bool)
    for correlation, difference in registration._both_frames(*blurred, p, runs_a, runs_b):
        full |= registration.small_warp(p) & (correlation >= MIN_REGISTERED) & (difference <= MAX_GREY_DIFFERENCE)
    sizes = []
    real_register = registration.register

    def counting(a, b, *args, **kwargs):
        sizes.append(len(a))
        return real_register(a, b, *args, **kwargs)

    monkeypatch.setattr(registration, "register", counting)
    verdict = shade_verified(copies, pairs)
    np.testing.assert_array_equal(verdict, full)
    assert verdict[: len(copy_pairs)].sum() >= 7 and not verdict[len(copy_pairs) :].any()  # one 2 px shift fails
    assert sizes[0] == len(pairs) and len(copy_pairs) <= sizes[1] < len(pairs)  # look-alikes stop early


def test_a_search_of_new_images_only_finds_every_pair_a_full_search_finds(tmp_path):
    originals = [garment(seed) for seed in range(12)]
    items = [*originals, *[copy for arr in originals[:4] for copy in turned_and_cut(arr)]]
    copies = copies_of(*items)
    hashes = np.array([aligned_hash(c.reshape(32, 32)) for c in copies], dtype=np.uint64)
    full = set(map(tuple, near_duplicate_pairs(hashes, copies, DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY).tolist()))
    by_registration = [pair for pair in full if similarity(copies, np.array([pair]))[0] < DEFAULT_MIN_SIMILARITY]
    assert len(by_registration) >= 4  # turned and cut copies: the ranked part of the rule is exercised
    # the first run knew every other image; the second searches the rest, with the first run's floors
    first = np.arange(len(items)) % 2 == 0
    rows = np.flatnonzero(first)
    known_pairs, first_ranks = pairs_with_new(
        hashes[rows], copies[rows], np.ones(len(rows), bool), DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY
    )
    ranks = Ranks.unsearched(len(items))
    ranks.floors[:, rows] = first_ranks.floors
    ranks.nearest[:, rows] = np.where(first_ranks.nearest >= 0, rows[first_ranks.nearest], -1)
    added, second = pairs_with_new(hashes, copies, ~first, DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY, ranks=ranks)
    incremental = set(map(tuple, rows[known_pairs].tolist())) | set(map(tuple, added.tolist()))
    assert full <= incremental
    # a third run after four originals left, through the index file as clean runs it: nothing new
    # arrives, the images that kept one of them search again, and the pairs equal a full search's
    index_file = tmp_path / "index.parquet"
    names = [f"image{k:02d}" for k in range(len(items))]
    by_name = pd.DataFrame([(names[a], names[b]) for a, b in sorted(incremental)], columns=["a", "b"])
    inspection_cache.save_near_index(index_file, "k", names, by_name, second)
    stay = np.array([k for k in range(len(items)) if k not in (4, 6, 8, 10)])
    new, third_ranks, search_again = inspection_cache.load_near_index(index_file, "k").ranks_for(
        [names[k] for k in stay]
    )
    assert not new.any() and search_again.any()
    position = {k: at for at, k in enumerate(stay)}
    kept = {(position[a], position[b]) for a, b in incremental if a in position and b in position}
    again, _ = pairs_with_new(
        hashes[stay],
        copies[stay],
        new,
        DEFAULT_RADIUS,
        DEFAULT_MIN_SIMILARITY,
        ranks=third_ranks,
        search_again=search_again,
    )
    full_now = set(
        map(tuple, near_duplicate_pairs(hashes[stay], copies[stay], DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY).tolist())
    )
    assert full_now <= kept | set(map(tuple, again.tolist()))


@pytest.fixture
def five_nearest(monkeypatch):
    """The geometry of the two tests below is built for five nearest per image."""
    monkeypatch.setattr(registration, "K_NEAREST", 5)
    monkeypatch.setattr(inspection_cache, "K_NEAREST", 5)


def test_a_known_image_sees_a_new_image_enter_its_nearest_through_its_floor(five_nearest):
    """Image 0 was searched alone with far images (its floor is low); the new image 1 is its nearest
    (0.9) but has five closer neighbours of its own, so only 0's floor can pair them."""
    rng = np.random.default_rng(0)
    d = 16
    centre = np.eye(d)[0]
    cluster = [centre + 0.05 * rng.normal(size=d) for _ in range(6)]  # 1 and its five close neighbours
    lone = 0.9 * centre + np.sqrt(1 - 0.81) * np.eye(d)[1]  # image 0: 0.9 from the cluster's centre
    far = [np.eye(d)[k] for k in range(2, 8)]
    vectors = np.stack([lone, *cluster, *far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    desc = np.stack([vectors, vectors]).astype(np.float32)
    known = np.zeros(len(vectors), bool)
    known[[0, *range(7, 13)]] = True  # 0 and the far ones were searched first
    rows = np.flatnonzero(known)
    _, first = ranked_candidates(desc[:, known], np.ones(known.sum(), bool), Ranks.unsearched(known.sum()))
    ranks = Ranks.unsearched(len(vectors))
    ranks.floors[:, known] = first.floors
    ranks.nearest[:, known] = rows[first.nearest]
    pairs, raised = ranked_candidates(desc, ~known, ranks)
    assert (0, 1) in set(map(tuple, pairs.tolist()))
    # 0's floor rises to its 5th best, now among the new images, and its nearest are those five
    scores = desc[0, 0] @ desc[0, 1:7].T
    assert raised.floors[0, 0] > ranks.floors[0, 0]
    assert raised.floors[0, 0] == pytest.approx(np.sort(scores)[-5], abs=1e-6)
    assert set(raised.nearest[0, 0]) == set(1 + np.argsort(scores)[-5:])
    without, _ = ranked_candidates(desc, ~known, Ranks.unsearched(len(vectors)))
    assert (0, 1) not in set(map(tuple, without.tolist()))  # 1's own five nearest are the cluster


def test_a_known_image_whose_neighbour_left_searches_again_and_sees_a_new_image_take_the_place(tmp_path, five_nearest):
    """Image 0's five nearest score 0.95..0.91; the one at 0.93 leaves the data and a new image at 0.90
    arrives whose own five nearest are a closer cluster. A search of everything now pairs 0 with it;
    0's kept floor (0.91) would not, so 0 searches again. The ranks survive the index file."""
    d = 16
    e = np.eye(d)
    scores_to_0 = [0.95, 0.94, 0.93, 0.92, 0.91]
    neighbours = [c * e[0] + np.sqrt(1 - c * c) * e[1 + i] for i, c in enumerate(scores_to_0)]
    arriving = 0.9 * e[0] + np.sqrt(1 - 0.81) * e[6]
    cluster = [arriving + 0.3 * e[7 + j] for j in range(5)]  # 0.96 from the arriving image, 0.86 from 0
    vectors = np.stack([e[0], *neighbours, *cluster, arriving])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    desc = np.stack([vectors, vectors]).astype(np.float32)
    names = ["zero", *[f"near{i}" for i in range(5)], *[f"cluster{j}" for j in range(5)], "arriving"]

    first_ids = names[:-1]
    _, first = ranked_candidates(desc[:, :-1], np.ones(len(first_ids), bool), Ranks.unsearched(len(first_ids)))
    path = tmp_path / "index.parquet"
    inspection_cache.save_near_index(path, "k", first_ids, pd.DataFrame({"a": [], "b": []}, dtype=str), first)
    index = inspection_cache.load_near_index(path, "k")
    assert np.array_equal(index.ranks.nearest, first.nearest) and np.allclose(index.ranks.floors, first.floors)
    assert set(index.ranks.nearest[0, 0]) == {1, 2, 3, 4, 5}

    now = [name for name in names if name != "near2"]  # the 0.93 neighbour left, one image arrived
    at = np.array([names.index(name) for name in now])
    new, ranks, search_again = index.ranks_for(now)
    assert list(np.flatnonzero(new)) == [now.index("arriving")]
    kept_near2 = {name for i, name in enumerate(first_ids) if 3 in first.nearest[:, i] and name != "near2"}
    assert "zero" in kept_near2 and "cluster0" not in kept_near2
    assert {now[k] for k in np.flatnonzero(search_again)} == kept_near2  # exactly those that kept near2
    wanted = (now.index("zero"), now.index("arriving"))

    full, _ = ranked_candidates(desc[:, at], np.ones(len(now), bool), Ranks.unsearched(len(now)))
    assert wanted in set(map(tuple, full.tolist()))
    stale, _ = ranked_candidates(desc[:, at], new, ranks)
    assert wanted not in set(map(tuple, stale.tolist()))  # the kept floor alone misses it
    pairs, searched = ranked_candidates(desc[:, at], new | search_again, ranks)
    assert wanted in set(map(tuple, pairs.tolist()))
    assert now.index("arriving") in searched.nearest[0, now.index("zero")]


def test_kept_nearest_after_new_images_arrive_equal_a_full_search(monkeypatch):
    monkeypatch.setattr(registration, "_KEPT_BLOCK", 7)  # several blocks of known images
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(2, 300, 16)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True)
    known = np.arange(300) < 240
    _, first = ranked_candidates(desc[:, known], np.ones(240, bool), Ranks.unsearched(240))
    ranks = Ranks.unsearched(300)
    ranks.floors[:, known], ranks.nearest[:, known] = first.floors, first.nearest
    _, incremental = ranked_candidates(desc, ~known, ranks)
    _, full = ranked_candidates(desc, np.ones(300, bool), Ranks.unsearched(300))
    np.testing.assert_array_equal(np.sort(incremental.nearest, axis=2), np.sort(full.nearest, axis=2))
    np.testing.assert_allclose(incremental.floors, full.floors, atol=1e-6)


def test_a_crop_matches_its_originals_zoomed_in_descriptor_better_than_the_plain_ones():
    originals = [frame_filling_garment(seed) for seed in range(10, 16)]
    crops = [cropped(arr, 2, 2, 2, 1) for arr in originals]  # about a 1.14 zoom
    desc = registration.descriptors(copies_of(*originals, *crops))
    n = len(originals)
    zoomed = registration.DESCRIPTOR_NAMES.index("zoom114")
    assert registration.MATCHED_AGAINST[zoomed] == 0  # the original zoomed in, against the others' plain
    for k in range(n):
        by_zoom = desc[zoomed, k] @ desc[0, n + k]
        assert by_zoom > desc[0, k] @ desc[0, n + k] and by_zoom > desc[1, k] @ desc[1, n + k]
    # and ranked_candidates holds every (original, crop) pair, matched from the zoomed side
    pairs, _ = ranked_candidates(desc, np.ones(2 * n, dtype=bool), Ranks.unsearched(2 * n))
    assert {(k, n + k) for k in range(n)} <= set(map(tuple, pairs.tolist()))


def test_zoomed_in_is_the_registrations_bilinear_sampling_of_a_zoom():
    copies = copies_of(*[frame_filling_garment(seed) for seed in range(3)]).reshape(3, 32, 32)
    for zoom in registration.ZOOMS:
        warp = np.tile(np.array([1 / zoom, 0, 0, 1 / zoom, 0, 0], np.float32), (3, 1))
        y, x = registration._coords(warp)
        sampled = registration._sample(copies.reshape(3, -1).astype(np.float32), y, x).reshape(copies.shape)
        np.testing.assert_allclose(registration.zoomed_in(copies, zoom), sampled, atol=1e-2)


def test_zoom_similarity_lifts_crops_over_the_prefilter_and_not_look_alikes():
    originals = [frame_filling_garment(seed) for seed in range(10, 16)]
    crops = [cropped(arr, 3, 3, 3, 2) for arr in originals]  # about a 1.2 zoom
    copies = copies_of(*originals, *crops)
    n = len(originals)
    crop_pairs = np.array([[k, n + k] for k in range(n)])
    plain, zoomed = similarity(copies, crop_pairs), zoom_similarity(copies, crop_pairs)
    assert (zoomed >= SHADE_PREFILTER).all()
    assert (plain < SHADE_PREFILTER).all()  # the plain similarity would have kept them from registration
    # a pair whose plain similarity is enough is not zoomed: the plain value comes back
    np.testing.assert_allclose(zoom_similarity(copies, crop_pairs, enough=0.5), plain)
    # either order: the zoom is tried on both copies
    np.testing.assert_allclose(zoom_similarity(copies, crop_pairs[:, ::-1]), zoomed, atol=1e-6)
    # two different garments stay below what a crop reaches
    others = np.array([[k, (k + 1) % n] for k in range(n)])
    assert zoom_similarity(copies, others).max() < zoomed.min()


def test_flat_gradients_at_other_angles_are_not_near_duplicates(monkeypatch):
    """An affine warp lays one linear ramp exactly onto another by turning it, or by squashing the axis
    along which it is flat: only a small warp makes a near-duplicate (the planted outliers' case)."""
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    ramps = [
        np.clip(128 + 9 * (np.cos(angle) * xx + np.sin(angle) * yy), 0, 255).astype(np.uint8)
        for angle in np.radians(np.arange(0, 360, 36))
    ]
    copies = copies_of(*ramps)
    pairs = np.array([(i, j) for i in range(len(ramps)) for j in range(i + 1, len(ramps))])
    assert not shade_verified(copies, pairs).any()
    assert not registration.padding_runs(copies).any()  # equal rows all the way are the picture's own
    # the unbounded rule would pair some of them
    monkeypatch.setattr(registration, "small_warp", lambda p: np.ones(len(p), dtype=bool))
    assert shade_verified(copies, pairs).any()


def test_inverse_undoes_a_warp_and_a_singular_warp_raises_nothing():
    p = np.array([[1.1, 0.05, -0.02, 0.95, 1.5, -0.7], [1, 1, 1, 1, 0, 0]], np.float32)
    q = registration.inverse(p)
    np.testing.assert_allclose(q[0, :4].reshape(2, 2) @ p[0, :4].reshape(2, 2), np.eye(2), atol=1e-5)
    np.testing.assert_allclose(q[0, :4].reshape(2, 2) @ p[0, 4:] + q[0, 4:], 0, atol=1e-5)
    assert not registration.small_warp(p[1:]).any()  # the singular one is never a near-duplicate's
