"""The one rule that decides "near-duplicate" everywhere: clean's near_duplicate / label_conflict flags
and split's groups both call near_duplicate_pairs / pairs_with_new with the same two params.

Per image (tasks.checks.phash): a 32x32 grey copy centred on the picture's centre of mass, and the
perceptual hash of that copy. Two parts, either makes a pair:
- Hash neighbours: the hashes within `radius` bits (multi-index hashing, sub-quadratic), each VERIFIED
  by a shift-tolerant similarity: the largest Pearson correlation of the two aligned copies over
  relative shifts of -MAX_SHIFT..MAX_SHIFT pixels, on their overlap. Centring on the centre of mass
  absorbs a shift by any fraction of a pixel and a resize (28 -> 32 px lands on the same copy); the
  correlation ignores brightness and contrast. Two different garments of one class (look-alikes)
  correlate up to ~0.98 on Fashion-MNIST even aligned, so the threshold sits above that, and chains
  of look-alikes do not form.
- Nearest neighbours by descriptor, registered (tasks.checks.registration): crops, rotations and
  larger shifts, whose hashes land far from their original's, verified by an affine registration
  and the grey-level difference that remains.
Tuned on Fashion-MNIST's train part only, reported on its test part and on digits
(bench/near_duplicates.py, bench/near_duplicate_registration.py, bench/data_quality.py)."""

from __future__ import annotations

import numpy as np

from tasks.checks.phash import ALIGNED_SIDE as SIDE
from tasks.checks.phash import radius_pairs, radius_pairs_between
from tasks.checks.registration import ZOOMS, Ranks, descriptors, ranked_candidates, shade_verified, zoomed_in
from tasks.common.engine import blocks_in_threads

# defaults of clean.near_duplicate_* and split.group_*, tuned on Fashion-MNIST's train part only
DEFAULT_RADIUS = 6
DEFAULT_MIN_SIMILARITY = 0.9875  # the highest recall with no wrong pair there (bench/near_duplicates.py)
MAX_SHIFT = 1  # pixels (of SIDE) the aligned copies may still be moved against each other
# ranked candidates are registered only from this zoom_similarity up (a crop's plain similarity to its
# original can be 0.7). Tuned on a train-part draw with 100 copies of each kind (seed 101), with 8
# nearest: 0.8 holds 0.95 of the crops, 0.85 0.94; the plain similarity's 0.8 held 0.83 with 5 nearest
# (BENCHMARKS.md, "zoom-aware pre-filter, 8 nearest")
SHADE_PREFILTER = 0.8
_CHUNK = 4096  # pairs per vectorized block
# clean's colour check of a near pair (colours_agree): grey levels a copy's colour offsets may move by
# re-encoding and resampling alone (JPEG's chroma subsampling), and the share of the larger offset a
# contrast change may take. Tuned on a 64 px colour draw of Fashion's train part (seed 100): the planted
# copies needed at most 0.15 (contrast x 0.75), the look-alikes it joined in other colours 0.33 and
# more, but for 4 of 31 in nearly the same colours (BENCHMARKS.md, "colour")
COLOUR_SLACK = 6.0
DEFAULT_MAX_COLOUR_CHANGE = 0.3


def _shifts(max_shift: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]


def _overlap_correlation(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Pearson correlation per row of a[k, S, S] with b moved by (dy, dx), on the overlap only."""
    s = a.shape[1]
    a_part = a[:, max(dy, 0) : s + min(dy, 0), max(dx, 0) : s + min(dx, 0)]
    b_part = b[:, max(-dy, 0) : s + min(-dy, 0), max(-dx, 0) : s + min(-dx, 0)]
    a_flat = a_part.reshape(len(a), -1)
    b_flat = b_part.reshape(len(b), -1)
    a_flat = a_flat - a_flat.mean(axis=1, keepdims=True)
    b_flat = b_flat - b_flat.mean(axis=1, keepdims=True)
    norm = np.sqrt((a_flat**2).sum(axis=1) * (b_flat**2).sum(axis=1))
    return np.einsum("ij,ij->i", a_flat, b_flat) / np.maximum(norm, 1e-9)


def similarity(copies: np.ndarray, pairs: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Shift-tolerant similarity in [-1, 1] of each pair (rows of indices into `copies`, [n, SIDE, SIDE]
    or [n, SIDE*SIDE] aligned copies, tasks.checks.phash.aligned_copy): the best overlap correlation over all shifts up to
    `max_shift` pixels. A flat copy correlates 0 with everything (no structure to match)."""
    return _per_pair(copies, pairs, lambda a, b: _best_overlap(a, b, max_shift))  # 10.9M pairs at 500k images


def zoom_similarity(
    copies: np.ndarray, pairs: np.ndarray, max_shift: int = MAX_SHIFT, enough: float = np.inf
) -> np.ndarray:
    """The largest similarity of each pair with either copy as it is or zoomed in by one of ZOOMS: a
    crop is its original zoomed in, so it keeps a high similarity this way and a low one plainly
    (registration's pre-filter: BENCHMARKS.md, "zoom-aware pre-filter"). A pair whose plain similarity
    reaches `enough` keeps that: the zooms are only tried on the others (a threshold's caller needs no
    more)."""

    def zoomed_best(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        best = _best_overlap(a, b, max_shift)
        low = best < enough
        a, b = a[low], b[low]
        for zoom in ZOOMS:
            best[low] = np.maximum(best[low], _best_overlap(zoomed_in(a, zoom), b, max_shift))
            best[low] = np.maximum(best[low], _best_overlap(a, zoomed_in(b, zoom), max_shift))
        return best

    return _per_pair(copies, pairs, zoomed_best)


def _per_pair(copies: np.ndarray, pairs: np.ndarray, score) -> np.ndarray:
    """score(a, b) -> [k] of every pair (rows of indices into the aligned copies [n, SIDE, SIDE] or
    [n, SIDE*SIDE]), a block of _CHUNK pairs at a time on the engine's threads."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    copies = np.asarray(copies).reshape(len(copies), SIDE, SIDE)
    out = np.empty(len(pairs), dtype=np.float64)

    def measure(start: int) -> None:
        block = pairs[start : start + _CHUNK]
        out[start : start + len(block)] = score(
            copies[block[:, 0]].astype(np.float32), copies[block[:, 1]].astype(np.float32)
        )

    blocks_in_threads(measure, len(pairs), _CHUNK)
    return out


def _best_overlap(a: np.ndarray, b: np.ndarray, max_shift: int) -> np.ndarray:
    """Per row of a and b [k, S, S]: the best overlap correlation over the shifts up to max_shift."""
    best = np.full(len(a), -1.0)
    if not len(a):  # (a block whose every pair was already similar enough)
        return best
    for dy, dx in _shifts(max_shift):
        np.maximum(best, _overlap_correlation(a, b, dy, dx), out=best)
    return best


def colours_agree(chroma_a: np.ndarray, chroma_b: np.ndarray, max_change: float | None) -> np.ndarray:
    """Per pair (row k of the [k, 3] colour offsets of its first and of its second picture:
    tasks.checks.quality.colour_offsets): whether the two could be one picture's copies by their colours. The rule above
    compares grey copies only, and its grey-level tests are absolute: on low-contrast colour pictures
    two look-alikes in different colours pass them (a 64 px colour draw of Fashion-MNIST: BENCHMARKS.md).
    A brightness shift leaves the offsets as they are and a contrast or saturation change scales them,
    so a pair agrees when its offsets differ by at most COLOUR_SLACK + max_change x the larger one.
    A grey picture (offsets within COLOUR_SLACK of 0) agrees with any: it may be a colour picture's
    grey copy, and the check is only there for colours that differ. max_change None: no check."""
    a, b = np.asarray(chroma_a, dtype=np.float64).reshape(-1, 3), np.asarray(chroma_b, dtype=np.float64).reshape(-1, 3)
    if max_change is None or not len(a):
        return np.ones(len(a), dtype=bool)
    size_a, size_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    grey = np.minimum(size_a, size_b) <= COLOUR_SLACK
    return grey | (np.linalg.norm(a - b, axis=1) <= COLOUR_SLACK + max_change * np.maximum(size_a, size_b))


def near_duplicate_pairs(
    hashes: np.ndarray, copies: np.ndarray, radius: int, min_similarity: float, max_shift: int = MAX_SHIFT
) -> np.ndarray:
    """Every near pair (i < j, sorted) among the images: the search of pairs_with_new with every image new."""
    new = np.ones(len(hashes), dtype=bool)
    return pairs_with_new(hashes, copies, new, radius, min_similarity, max_shift)[0]


def pairs_with_new(
    hashes: np.ndarray,
    copies: np.ndarray,
    new: np.ndarray,
    radius: int,
    min_similarity: float,
    max_shift: int = MAX_SHIFT,
    rows: np.ndarray | None = None,
    ranks: Ranks | None = None,
    search_again: np.ndarray | None = None,
) -> tuple[np.ndarray, Ranks]:
    """(pairs, ranks): the near pairs (i < j, sorted) that have at least one `new` member (bool per
    image), by both parts of the rule:
    - hash neighbours within `radius` bits with similarity >= min_similarity: new hashes are looked up
      among the known ones and among each other;
    - the nearest neighbours by descriptor (tasks.checks.registration.ranked_candidates) that the
      registration verifies (shade_verified), among those with zoom_similarity >= SHADE_PREFILTER.
    Image i's aligned copy is copies[rows[i]] (rows: the identity when None), so a caller holding many
    images' copies in one matrix (tasks.checks.inspection_table) passes it whole, with no second copy.
    `ranks` are the known images' floors and nearest from their own search (persisted with the pairs,
    tasks.checks.inspection_cache); the returned ranks hold the new images' too. `search_again` (bool
    per image): known images whose nearest must be searched again (one of them left the data); their
    pairs with known images may come back too. With every image new it is near_duplicate_pairs
    itself; known-known pairs are what a persisted index already holds."""
    hashes = np.asarray(hashes).astype(np.uint64)
    new = np.asarray(new, dtype=bool)
    rows = np.arange(len(hashes)) if rows is None else np.asarray(rows, dtype=np.int64)
    copies = np.asarray(copies)
    ranks = Ranks.unsearched(len(hashes)) if ranks is None else ranks
    searched = new if search_again is None else new | np.asarray(search_again, dtype=bool)
    hash_pairs = _hash_candidates(hashes, new, radius)
    by_hash = hash_pairs[similarity(copies, rows[hash_pairs], max_shift) >= min_similarity]
    ranked, new_ranks = ranked_candidates(descriptors(copies, rows), searched, ranks)
    if search_again is not None:  # a pair a known image kept was registered when it was ranked
        ranked = ranked[~_kept_before(ranked, new, ranks.nearest)]
    ranked = _without(ranked, by_hash)
    ranked = ranked[zoom_similarity(copies, rows[ranked], max_shift, enough=SHADE_PREFILTER) >= SHADE_PREFILTER]
    by_shade = ranked[shade_verified(copies, ranked, rows)]
    pairs = np.unique(np.concatenate([by_hash, by_shade]), axis=0).reshape(-1, 2)
    return pairs, new_ranks


def _kept_before(pairs: np.ndarray, new: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Per pair: both images known and one among the other's kept nearest ([D, n, K])."""
    a, b = pairs[:, 0], pairs[:, 1]
    kept = (nearest[:, a] == b[None, :, None]).any(axis=(0, 2)) | (nearest[:, b] == a[None, :, None]).any(axis=(0, 2))
    return ~new[a] & ~new[b] & kept


def _hash_candidates(hashes: np.ndarray, new: np.ndarray, radius: int) -> np.ndarray:
    """Pairs (i < j, sorted) within `radius` bits with at least one new member."""
    new_at, known_at = np.flatnonzero(new), np.flatnonzero(~new)
    across = radius_pairs_between(hashes[new_at], hashes[known_at], radius)
    among = radius_pairs(hashes[new_at], radius)
    candidates = np.concatenate(
        [np.stack([new_at[across[:, 0]], known_at[across[:, 1]]], axis=1), new_at[among].reshape(-1, 2)]
    ).astype(np.int64)
    candidates = np.sort(candidates, axis=1)
    return candidates[np.lexsort((candidates[:, 1], candidates[:, 0]))]


def _without(pairs: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """The rows of `pairs` that are not rows of `taken` (both [k, 2] int64)."""
    if not len(pairs) or not len(taken):
        return pairs
    width = max(int(pairs.max()), int(taken.max())) + 1
    return pairs[~np.isin(pairs[:, 0] * width + pairs[:, 1], taken[:, 0] * width + taken[:, 1])]
