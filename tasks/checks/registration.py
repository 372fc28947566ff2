"""Near-duplicates a perceptual hash cannot find: copies cut at the edges (crop), turned by a few
degrees or moved by a pixel or two, whose aligned hashes land 4-26 bits from their original's.

Candidates (ranked_candidates): each image's K_NEAREST nearest images by descriptors of its aligned
copy (tasks.checks.phash.aligned_copy): the 8x8 block means of the blurred copy; the same of the copy
with its content box stretched to a fixed size (a crop is a zoom of the content box); and the copy
zoomed in about its centre by each of ZOOMS, matched against the others' plain descriptor (a crop of a
garment that fills its frame is such a zoom, and its content box cannot show it).
Ranks, not a threshold: on Fashion-MNIST a descriptor threshold that holds the crops gives dozens of
pairs an image, and more as the data grows; K neighbours stay K.

Verification (shade_verified): an affine warp plus gain and offset fitted by Gauss-Newton on blurred
copies; the pair is a near-duplicate when the registered copies correlate at least MIN_REGISTERED
AND differ by at most MAX_GREY_DIFFERENCE grey levels (of 255) on average. Registration alone also
lays different garments of one kind onto each other (plain trousers at 0.998); what tells them apart
is the shade: a copy that was moved, cut or turned keeps its grey levels, a look-alike does not.
Tuned on Fashion-MNIST's train part only (the highest recall with no wrong pair), reported on its test
part and on digits: BENCHMARKS.md, "registration plus a grey-level difference". A pair whose copies
still differ by more than _COARSE_MAX_DIFFERENCE after the coarse level is not taken to the fine level:
most candidates are look-alikes, and none that verified on the tuning part came near that bound.

Two things make the verdict independent of the pair's order and of aligned_copy's padding (BENCHMARKS.md,
"2026-11-29: padding left out, both frames"): rows and columns that aligned_copy filled by repeating a
garment's cut edge (padding_runs) are left out of the fit and of the comparison, and the pair is
compared in both images' frames with the one warp (its inverse for the second): a crop compares
well only in its original's frame, where nothing of the original lies outside the copy."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter

from tasks.checks.phash import ALIGNED_SIDE as S
from tasks.common.engine import blocks_in_threads

# neighbours per image and descriptor. Tuned on a train-part draw with 100 copies of each kind (seed
# 101), with clean's zoom-aware pre-filter: 8 finds 0.981 of them, 5 0.974 (crops 0.95 / 0.91, 2 px
# shifts 0.95 / 0.91), with the same 4 pairs of different pictures; 12 found one more pair of different
# pictures. 8 costs 1.5x the registrations (BENCHMARKS.md, "zoom-aware pre-filter, 8 nearest")
K_NEAREST = 8
# the zoomed-in queries: a crop of 1-4 px of 28 is a zoom of 1.04-1.17. Tuned on the train part: 1.07
# and 1.14 make 19 of its 20 planted crops candidates (the other descriptors 17) with no wrong pair in
# clean's rule; 1.12 alone also 19, but one pair of look-alike trousers; 1.10 alone 18
ZOOMS = (1.07, 1.14)
# per descriptor: its name (clean's near index columns) and the descriptor it is matched against
DESCRIPTOR_NAMES = ("plain", "box", *(f"zoom{round(z * 100)}" for z in ZOOMS))
MATCHED_AGAINST = (0, 1, *(0 for _ in ZOOMS))
DESCRIPTOR_FLOOR = 0.8  # a neighbour must correlate at least this much by descriptor
MIN_REGISTERED = 0.98  # correlation of the registered copies
MAX_GREY_DIFFERENCE = 3.0  # mean absolute grey-level difference of the registered copies (of 255)
# Cauchy weight scale (grey levels) of the fit's residuals: a strip a shift uncovered or a cut removed
# no longer pulls the warp into a wrong zoom (tuned on the train part: 20/30/40/60/100 and unweighted)
ROBUST_SCALE = 40.0
_BOX_SIDE = 28  # the content box is stretched to this many pixels of the copy
_COMPARE_SIGMA = 0.8  # blur of both copies before they are compared (registered)
_MARGIN = 3  # pixels at the copies' edges left out of the comparison (aligned_copy repeats edge pixels)
# an edge run of repeated rows is padding only when the repeated row is not flat: a repeated flat
# background row may be real background, and the other image's content there is a real difference
_FLAT_RANGE = 2.0
_MAX_PADDING = S // 4  # a longer run of equal rows is the picture's own (a flat gradient), not centring's
# a near-duplicate's warp is small: the planted kinds turn by at most 5 degrees and zoom by at most 1.17
# (a crop); twice that turn and a zoom of 1.3 bound it. Without a bound, two flat gradients at 36 degrees
# "register" onto each other by a turn, or by a warp that squashes one axis to nothing.
MAX_TURN_DEGREES = 10.0
MAX_ZOOM = 1.3
_LEVELS = ((1.5, 3), (0.8, 2))  # Gauss-Newton (blur sigma, steps): more steps or starts found nothing more
# after the coarse level, a pair whose registered copies still differ by more than this many grey levels
# in both frames is not a near-duplicate, and the fine level is not run for it. Tuned on a train-part draw
# with 100 copies of each kind (seed 101): the verified pairs' coarse difference is at most 4.5 there,
# and 8 leaves 94 % of the pairs out of the fine level (6: 97 %, 4: 2 verified pairs lost)
_COARSE_MAX_DIFFERENCE = 8.0
_SCORES_PER_BLOCK = 2**24  # descriptor scores computed at once (64 MB): query images per block = this / n
_PAIR_BLOCK = 2048  # pairs registered at once
_KEPT_BLOCK = 16384  # known images whose kept nearest are scored at once (about 20 MB)
_C = (S - 1) / 2
_GRID_Y = (np.mgrid[0:S, 0:S][0].ravel() - _C)[None, :].astype(np.float32)
_GRID_X = (np.mgrid[0:S, 0:S][1].ravel() - _C)[None, :].astype(np.float32)
_INNER = (np.abs(_GRID_Y) <= _C - _MARGIN) & (np.abs(_GRID_X) <= _C - _MARGIN)


def _border_colour(copy: np.ndarray) -> float:
    return float(np.median(np.concatenate([copy[0], copy[-1], copy[:, 0], copy[:, -1]])))


def content_box(copy: np.ndarray, share: float = 0.15) -> tuple[float, float, float, float] | None:
    """(top, left, height, width) of the pixels that differ from the border colour by more than `share`
    of the largest difference; None for a flat copy."""
    weight = np.abs(copy - _border_colour(copy))
    mask = weight > share * max(float(weight.max()), 1e-6)
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(rows[0]), float(cols[0]), float(rows[-1] + 1 - rows[0]), float(cols[-1] + 1 - cols[0])


def _content_stretched(copy: np.ndarray) -> np.ndarray:
    """The copy with its content box stretched to _BOX_SIDE pixels in the middle (a flat copy as it is)."""
    box = content_box(copy)
    if box is None:
        return copy
    top, left, height, width = box
    zoom_y, zoom_x = height / _BOX_SIDE, width / _BOX_SIDE
    offset = [top - (S - _BOX_SIDE) / 2 * zoom_y, left - (S - _BOX_SIDE) / 2 * zoom_x]
    return affine_transform(
        copy, np.diag([zoom_y, zoom_x]), offset=offset, output_shape=(S, S), order=1, cval=_border_colour(copy)
    )


def _block_means(copies: np.ndarray, cell: int = 4) -> np.ndarray:
    """Unit-norm, zero-mean 8x8 block means of the blurred copies: dot products are correlations."""
    blurred = gaussian_filter(copies, (0, 1.0, 1.0))
    d = blurred.reshape(len(copies), S // cell, cell, S // cell, cell).mean(axis=(2, 4)).reshape(len(copies), -1)
    d -= d.mean(1, keepdims=True)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)


def zoomed_in(copies: np.ndarray, zoom: float) -> np.ndarray:
    """The copies [m, S, S] magnified by `zoom` about their centre (edges repeated): bilinear sampling,
    which for a zoom is one matrix for the rows and the same for the columns."""
    m = _zoom_matrix(zoom)
    return (m @ np.asarray(copies, dtype=np.float32) @ m.T).astype(np.float32)


@lru_cache(maxsize=8)
def _zoom_matrix(zoom: float) -> np.ndarray:
    """[S, S]: row i holds the bilinear weights of the pixels at (i - c) / zoom + c, clamped as _sample."""
    at = np.clip((np.arange(S) - _C) / zoom + _C, 0, S - 1.001).astype(np.float32)
    low = at.astype(np.int32)
    m = np.zeros((S, S), np.float32)
    m[np.arange(S), low] = 1 - (at - low)
    m[np.arange(S), low + 1] += at - low
    return m


def descriptors(copies: np.ndarray, rows: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
    """float32 [len(DESCRIPTOR_NAMES), n, 64]: the plain, the content-box and the zoomed-in descriptors
    of copies[rows] (aligned copies, [m, S*S] or [m, S, S]; rows: the identity when None), a block at
    a time."""
    rows = np.arange(len(copies)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(DESCRIPTOR_NAMES), len(rows), (S // 4) ** 2), dtype=np.float32)
    for start in range(0, len(rows), block):
        part = np.asarray(copies[rows[start : start + block]], dtype=np.float32).reshape(-1, S, S)
        out[0, start : start + len(part)] = _block_means(part)
        out[1, start : start + len(part)] = _block_means(np.stack([_content_stretched(c) for c in part]))
        for at, zoom in enumerate(ZOOMS, start=2):
            out[at, start : start + len(part)] = _block_means(zoomed_in(part, zoom))
    return out


class Ranks(NamedTuple):
    """What each image keeps of its own nearest-neighbour search, per descriptor (ranked_candidates):
    floors [D, n] float32, a lower bound of its K_NEAREST-th best score (inf: never searched), and
    nearest [D, n, K_NEAREST] int64, the images (positions) that scored best, best first, -1 for none
    (D = len(DESCRIPTOR_NAMES)).
    The lists tell which images must search again when images leave the data (tasks.clean)."""

    floors: np.ndarray
    nearest: np.ndarray

    @classmethod
    def unsearched(cls, n: int) -> Ranks:
        d = len(DESCRIPTOR_NAMES)
        return cls(np.full((d, n), np.inf, np.float32), np.full((d, n, K_NEAREST), -1, np.int64))


def ranked_candidates(desc: np.ndarray, new: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, Ranks]:
    """(pairs i < j sorted, ranks): the candidate pairs with at least one `new` image, by any
    descriptor of `desc` ([D, n, d], descriptors(); descriptor w's queries are matched against
    descriptor MATCHED_AGAINST[w] of the others): every new image's K_NEAREST nearest among all
    images, and every known image's new neighbours that score at least its floor (`ranks`: what the
    known images kept of their earlier searches; a known image whose kept neighbours are not all still
    there must be passed as new, as its floor may then be above its true K-th best).

    The returned ranks hold the new images' own searches and, for known images, their kept nearest
    merged with the new images' scores: the floors stay at or below the true K-th best over all
    images, so a search of new images only checks every pair a search of everything would, and
    perhaps a few more, while the floors rise with the data. The scores are computed a block of new
    images at a time against all (torch: its matmul and top-k use every core)."""
    import torch

    new = np.asarray(new, dtype=bool)
    floors = np.array(ranks.floors, dtype=np.float32, copy=True)
    nearest = np.array(ranks.nearest, dtype=np.int64, copy=True)
    new_at, known_at = np.flatnonzero(new), np.flatnonzero(~new)
    k = min(K_NEAREST, len(new) - 1)
    if k < 1 or not len(new_at):
        return np.empty((0, 2), dtype=np.int64), Ranks(floors, nearest)
    found: list[np.ndarray] = []
    step = max(1, _SCORES_PER_BLOCK // len(new))
    nearest[:, new_at] = -1
    for which in range(len(desc)):
        queries = torch.from_numpy(np.ascontiguousarray(desc[which], dtype=np.float32))
        every = torch.from_numpy(np.ascontiguousarray(desc[MATCHED_AGAINST[which]], dtype=np.float32))
        symmetric = MATCHED_AGAINST[which] == which
        known_floor = torch.from_numpy(np.maximum(floors[which, known_at], DESCRIPTOR_FLOOR))
        known_best, known_ids = _kept_scores(queries, every, nearest[which, known_at, :k], new, known_at)
        for start in range(0, len(new_at), step):
            query = new_at[start : start + step]
            scores = queries[query] @ every.T  # [q, n]
            scores[torch.arange(len(query)), torch.from_numpy(query)] = -2.0  # not its own neighbour
            best, closest = scores.topk(k, dim=1)
            floors[which, query] = best[:, -1].numpy()
            nearest[which, query, :k] = closest.numpy()
            keep = (best >= DESCRIPTOR_FLOOR).numpy()
            found.append(np.stack([np.repeat(query, k).reshape(-1, k)[keep], closest.numpy()[keep]], axis=1))
            if len(known_at):  # known images that now have this query among their K nearest
                known_scores = scores[:, known_at] if symmetric else every[query] @ queries[known_at].T
                q_at, i_at = torch.nonzero(known_scores >= known_floor, as_tuple=True)
                found.append(np.stack([query[q_at.numpy()], known_at[i_at.numpy()]], axis=1))
                known_best, at = torch.cat([known_best, known_scores]).topk(k, dim=0)
                from_query = torch.from_numpy(query)[(at - k).clamp_min(0)]
                known_ids = torch.where(at < k, known_ids.gather(0, at.clamp_max(k - 1)), from_query)
        if len(known_at):
            floors[which, known_at] = np.maximum(floors[which, known_at], known_best[-1].numpy())
            nearest[which, known_at, :k] = np.where(known_best.numpy() > -2.0, known_ids.numpy(), -1).T
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)
    return np.unique(pairs, axis=0).reshape(-1, 2), Ranks(floors, nearest)


def _kept_scores(queries, every, kept: np.ndarray, new: np.ndarray, known_at: np.ndarray):
    """([k, n_known] scores, [k, n_known] positions) of the known images' kept nearest (their `queries`
    against the kept ones' `every`), -2 for an empty place or a neighbour searched again now (its score
    comes back with the new images' scores)."""
    import torch

    ids = torch.from_numpy(np.ascontiguousarray(kept.T))  # [k, n_known]
    usable = torch.from_numpy(((kept >= 0) & ~new[np.maximum(kept, 0)]).T)
    scores = torch.empty(ids.shape)
    for start in range(0, len(known_at), _KEPT_BLOCK):  # a block of known images at a time: bounded memory
        part = slice(start, start + _KEPT_BLOCK)
        partners = every[ids[:, part].clamp_min(0)]  # [k, block, d]
        scores[:, part] = (partners * queries[torch.from_numpy(known_at[part])][None]).sum(-1)
    scores = torch.where(usable, scores, torch.tensor(-2.0))
    best, at = scores.topk(len(ids), dim=0)  # best first, as the merge with the new images' scores keeps them
    return best, torch.where(usable.gather(0, at), ids.gather(0, at), torch.tensor(-1))


def _sample(flat: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of images [P, S*S] at (y, x) [P, S*S], clamped at the edges."""
    y, x = np.clip(y, 0, S - 1.001), np.clip(x, 0, S - 1.001)
    y0, x0 = y.astype(np.int32), x.astype(np.int32)
    wy, wx = y - y0, x - x0
    at = y0 * S + x0

    def get(offset: int) -> np.ndarray:
        return np.take_along_axis(flat, at + offset, 1)

    return (get(0) * (1 - wx) + get(1) * wx) * (1 - wy) + (get(S) * (1 - wx) + get(S + 1) * wx) * wy


def _coords(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b's coordinates of a's pixels under p [P, 6] = (A row-major, t): b - c = A (a - c) + t."""
    y = p[:, 0:1] * _GRID_Y + p[:, 1:2] * _GRID_X + p[:, 4:5] + _C
    x = p[:, 2:3] * _GRID_Y + p[:, 3:4] * _GRID_X + p[:, 5:6] + _C
    return y, x


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(images.reshape(-1, S, S), (0, sigma, sigma)).reshape(len(images), -1)


def padding_runs(copies: np.ndarray) -> np.ndarray:
    """int [P, 4] (top, bottom, left, right): how many rows / columns at each edge of the aligned copies
    [P, S*S] repeat the edge exactly, i.e. aligned_copy's padding where centring moved a picture whose
    content reaches its frame; 0 where the edge is flat or not repeated."""
    images = np.asarray(copies, dtype=np.float32).reshape(-1, S, S)
    runs = np.zeros((len(images), 4), dtype=np.int64)
    for side, view in enumerate(
        (images, images[:, ::-1], images.transpose(0, 2, 1), images.transpose(0, 2, 1)[:, ::-1])
    ):
        half = view[:, : S // 2]
        repeats = np.all(half == half[:, :1], axis=2).cumprod(axis=1).sum(axis=1)  # the edge row counts itself
        not_flat = np.ptp(half[:, 0], axis=1) > _FLAT_RANGE
        runs[:, side] = np.where((repeats >= 2) & (repeats <= _MAX_PADDING) & not_flat, repeats, 0)
    return runs


def small_warp(p: np.ndarray) -> np.ndarray:
    """Per warp [P, 6]: turns by at most MAX_TURN_DEGREES and stretches no axis beyond MAX_ZOOM either way
    (the same verdict for its inverse)."""
    linear = p[:, :4].reshape(-1, 2, 2).astype(np.float64)
    turn = np.degrees(np.arctan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1]))
    stretch = np.linalg.svd(linear, compute_uv=False)  # [P, 2], largest first
    return (np.abs(turn) <= MAX_TURN_DEGREES) & (stretch[:, 0] <= MAX_ZOOM) & (stretch[:, 1] >= 1 / MAX_ZOOM)


def _within(y: np.ndarray, x: np.ndarray, runs: np.ndarray | None, margin: float = 0) -> np.ndarray:
    """Where (y, x) [P, S*S] lies inside the copy's frame less its padding runs [P, 4] and `margin`."""
    runs = np.zeros((len(y), 4)) if runs is None else runs
    top, bottom, left, right = (np.maximum(runs[:, i : i + 1], margin) for i in range(4))
    return (y >= top) & (y <= S - 1 - bottom) & (x >= left) & (x <= S - 1 - right)


def _grid_within(runs: np.ndarray | None, n: int) -> np.ndarray:
    return _within(np.broadcast_to(_GRID_Y + _C, (n, S * S)), np.broadcast_to(_GRID_X + _C, (n, S * S)), runs)


def inverse(p: np.ndarray) -> np.ndarray:
    """The warps [P, 6] that undo p: a's coordinates of b's pixels. A singular warp (never a small one,
    small_warp) gets the identity's linear part instead of an error."""
    linear = p[:, :4].reshape(-1, 2, 2).astype(np.float64)
    singular = np.abs(np.linalg.det(linear)) < 1e-9
    linear[singular] = np.eye(2)
    a_inv = np.linalg.inv(linear)
    out = np.empty_like(p)
    out[:, :4] = a_inv.reshape(-1, 4)
    out[:, 4:] = -(a_inv @ p[:, 4:, None].astype(np.float64))[..., 0]
    return out


def register(
    a: np.ndarray,
    b: np.ndarray,
    start: np.ndarray | None = None,
    levels=_LEVELS,
    runs_a: np.ndarray | None = None,
    runs_b: np.ndarray | None = None,
) -> np.ndarray:
    """The warps p [P, 6] that lay each b [P, S*S] onto its a: Gauss-Newton from `start` (no warp when
    None), minimizing |a - gain * b(warp) - offset|^2 on blurred copies, coarse to fine, each pixel
    weighted by 1 / (1 + (residual / ROBUST_SCALE)^2) (iteratively reweighted least squares). Pixels in
    a's padding runs, or landing in b's (padding_runs; none when None), do not count."""
    n = len(a)
    a_valid = _grid_within(runs_a, n)
    p = np.tile(np.array([1, 0, 0, 1, 0, 0], np.float32), (n, 1)) if start is None else start.copy()
    jac = np.empty((n, 8, S * S), np.float32)  # parameter by pixel: each parameter's row written in one go
    jac[:, 7] = 1.0  # offset
    for sigma, steps in levels:
        a_blur, b_blur = _blur(a, sigma), _blur(b, sigma)
        for _ in range(steps):
            y, x = _coords(p)
            inside = (a_valid & _within(y, x, runs_b)).astype(np.float32)
            warped = _sample(b_blur, y, x)
            gy, gx = (g.reshape(n, -1) for g in np.gradient(warped.reshape(n, S, S), axis=(1, 2)))
            # the warped image's gradient, taken back to b's coordinates through A^-1
            inv = np.linalg.inv(p[:, :4].reshape(n, 2, 2))
            gby = gy * inv[:, 0, 0:1] + gx * inv[:, 1, 0:1]
            gbx = gy * inv[:, 0, 1:2] + gx * inv[:, 1, 1:2]
            jac[:, 0], jac[:, 1], jac[:, 2], jac[:, 3] = gby * _GRID_Y, gby * _GRID_X, gbx * _GRID_Y, gbx * _GRID_X
            jac[:, 4], jac[:, 5], jac[:, 6] = gby, gbx, warped  # translation, gain
            residual = a_blur - warped
            weighted = jac * (inside / (1 + (residual / ROBUST_SCALE) ** 2))[:, None, :]
            normal = weighted @ jac.transpose(0, 2, 1) + 1e-2 * np.eye(8, dtype=np.float32)
            step = np.linalg.solve(normal, weighted @ residual[..., None])
            p += np.clip(step[:, :6, 0], -1.0, 1.0)
    return p


def registered(
    a: np.ndarray,
    b: np.ndarray,
    p: np.ndarray | None = None,
    runs_a: np.ndarray | None = None,
    runs_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, mean absolute grey-level difference) of a and b registered onto it [P, S*S] by the
    warps p (register's when None), both blurred (_COMPARE_SIGMA), inside the margin, outside a's padding
    runs and where the warp lands inside b less its margin and padding runs (none when None)."""
    p = register(a, b, runs_a=runs_a, runs_b=runs_b) if p is None else p
    return _compared(_blur(a, _COMPARE_SIGMA), _blur(b, _COMPARE_SIGMA), p, runs_a, runs_b)


def _compared(a, b, p, runs_a, runs_b) -> tuple[np.ndarray, np.ndarray]:
    """registered()'s measure on copies already blurred by _COMPARE_SIGMA."""
    y, x = _coords(p)
    warped = _sample(b, y, x)
    m = (_INNER & _grid_within(runs_a, len(a)) & _within(y, x, runs_b, _MARGIN)).astype(np.float32)
    count = np.maximum(m.sum(1), 1)
    difference = (np.abs(a - warped) * m).sum(1) / count
    am = (a - (a * m).sum(1, keepdims=True) / count[:, None]) * m
    wm = (warped - (warped * m).sum(1, keepdims=True) / count[:, None]) * m
    correlation = (am * wm).sum(1) / np.maximum(np.sqrt((am * am).sum(1) * (wm * wm).sum(1)), 1e-9)
    return correlation, difference


def shade_verified(copies: np.ndarray, pairs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per pair (indices into rows, which index the aligned copies [m, S*S]; the identity when None):
    registered correlation >= MIN_REGISTERED and grey difference <= MAX_GREY_DIFFERENCE."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    rows = np.arange(len(copies)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(pairs), dtype=bool)

    def measure(start: int) -> None:
        block = rows[pairs[start : start + _PAIR_BLOCK]]
        a = np.asarray(copies[block[:, 0]], dtype=np.float32).reshape(len(block), -1)
        b = np.asarray(copies[block[:, 1]], dtype=np.float32).reshape(len(block), -1)
        runs_a, runs_b = padding_runs(a), padding_runs(b)
        a_blur, b_blur = _blur(a, _COMPARE_SIGMA), _blur(b, _COMPARE_SIGMA)  # once for all comparisons
        p = register(a, b, levels=_LEVELS[:1], runs_a=runs_a, runs_b=runs_b)
        near = np.zeros(len(block), dtype=bool)
        for _, difference in _both_frames(a_blur, b_blur, p, runs_a, runs_b):
            near |= difference <= _COARSE_MAX_DIFFERENCE
        verdict = np.zeros(len(block), dtype=bool)
        if near.any():  # the fine level, from the coarse warps, for the pairs still near
            a, b, a_blur, b_blur, runs_a, runs_b = (x[near] for x in (a, b, a_blur, b_blur, runs_a, runs_b))
            p = register(a, b, start=p[near], levels=_LEVELS[1:], runs_a=runs_a, runs_b=runs_b)
            small, fine = small_warp(p), np.zeros(len(p), dtype=bool)
            for correlation, difference in _both_frames(a_blur, b_blur, p, runs_a, runs_b):
                fine |= small & (correlation >= MIN_REGISTERED) & (difference <= MAX_GREY_DIFFERENCE)
            verdict[near] = fine
        out[start : start + len(block)] = verdict

    blocks_in_threads(measure, len(pairs), _PAIR_BLOCK)
    return out


def _both_frames(a_blur, b_blur, p, runs_a, runs_b):
    """(correlation, difference) in a's frame with the warp p, then in b's with its inverse: a crop
    compares well only in its original's frame, where nothing of the original lies outside the copy."""
    yield _compared(a_blur, b_blur, p, runs_a, runs_b)
    yield _compared(b_blur, a_blur, inverse(p), runs_b, runs_a)
