"""The one rule that decides "near-duplicate" everywhere: clean's near_duplicate / label_conflict flags
and split's groups both call near_duplicate_pairs (or verified) with the same two params.

Per image (tasks.checks.phash): a 32x32 grey copy centred on the picture's centre of mass, and the
perceptual hash of that copy. Candidate pairs are the hashes within `radius` bits (multi-index
hashing, sub-quadratic); each candidate is then VERIFIED by a shift-tolerant similarity: the largest
Pearson correlation of the two aligned copies over relative shifts of -MAX_SHIFT..MAX_SHIFT pixels,
on their overlap. Centring on the centre of mass absorbs a shift by any fraction of a pixel and a
resize (28 -> 32 px lands on the same copy); the correlation ignores brightness and contrast. Two
different garments of one class (look-alikes) correlate up to ~0.98 on Fashion-MNIST even aligned,
so the threshold sits above that, and chains of look-alikes do not form. Tuned on Fashion-MNIST's
train part only, reported on its test part and on digits (bench/near_duplicates.py)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tasks.checks.phash import ALIGNED_SIDE as SIDE
from tasks.checks.phash import radius_pairs, radius_pairs_between

# defaults of clean.near_duplicate_* and split.group_*, tuned on Fashion-MNIST's train part only
DEFAULT_RADIUS = 6
DEFAULT_MIN_SIMILARITY = 0.9875  # the highest recall with no wrong pair there (bench/near_duplicates.py)
MAX_SHIFT = 1  # pixels (of SIDE) the aligned copies may still be moved against each other
_CHUNK = 4096  # pairs per vectorized block


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
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    copies = np.asarray(copies).reshape(len(copies), SIDE, SIDE)
    out = np.empty(len(pairs), dtype=np.float64)

    def measure(start: int) -> None:
        block = pairs[start : start + _CHUNK]
        a = copies[block[:, 0]].astype(np.float32)
        b = copies[block[:, 1]].astype(np.float32)
        best = np.full(len(block), -1.0)
        for dy, dx in _shifts(max_shift):
            np.maximum(best, _overlap_correlation(a, b, dy, dx), out=best)
        out[start : start + len(block)] = best

    starts = range(0, len(pairs), _CHUNK)
    if len(starts) < 2:
        for start in starts:
            measure(start)
        return out
    # numpy's arithmetic lets go of the GIL: threads use the cores the engine's workers leave idle
    # while the driver verifies (10.9M pairs at 500k images)
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(measure, starts))
    return out


def verified(copies: np.ndarray, pairs: np.ndarray, min_similarity: float, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """The candidate pairs that are near-duplicates: similarity(...) >= min_similarity."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return pairs
    return pairs[similarity(copies, pairs, max_shift) >= min_similarity]


def near_duplicate_pairs(
    hashes: np.ndarray, copies: np.ndarray, radius: int, min_similarity: float, max_shift: int = MAX_SHIFT
) -> np.ndarray:
    """Candidate pairs from the aligned hashes (within `radius` bits), verified on the aligned copies."""
    return verified(copies, radius_pairs(hashes, radius), min_similarity, max_shift)


def pairs_with_new(
    hashes: np.ndarray,
    copies: np.ndarray,
    new: np.ndarray,
    radius: int,
    min_similarity: float,
    max_shift: int = MAX_SHIFT,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """The near_duplicate_pairs (i < j, sorted) that have at least one `new` member (bool per image):
    new hashes are looked up among the known ones and among each other. Image i's aligned copy is
    copies[rows[i]] (rows: the identity when None), so a caller holding many images' copies in one
    matrix (tasks.checks.inspection_table) passes it whole, with no second copy. With every image new
    it is near_duplicate_pairs itself; known-known pairs are what a persisted index
    (tasks.checks.inspection_cache) already holds."""
    hashes = np.asarray(hashes).astype(np.uint64)
    new_at, known_at = np.flatnonzero(new), np.flatnonzero(~np.asarray(new, dtype=bool))
    across = radius_pairs_between(hashes[new_at], hashes[known_at], radius)
    among = radius_pairs(hashes[new_at], radius)
    candidates = np.concatenate(
        [np.stack([new_at[across[:, 0]], known_at[across[:, 1]]], axis=1), new_at[among].reshape(-1, 2)]
    )
    if not len(candidates):
        return np.empty((0, 2), dtype=np.int64)
    if len(across):  # the new images' pairs among themselves come sorted; with pairs across, sort all
        candidates = np.sort(candidates, axis=1)
        candidates = candidates[np.lexsort((candidates[:, 1], candidates[:, 0]))]
    rows = np.arange(len(hashes)) if rows is None else np.asarray(rows, dtype=np.int64)
    return candidates[similarity(np.asarray(copies), rows[candidates], max_shift) >= min_similarity]
