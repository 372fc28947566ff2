"""What near-duplicate detection keeps per image: a 32x32 grey copy centred on the picture's centre of
mass (ALIGNED_SIDE), its 64-bit DCT perceptual hash, and a radius search over many hashes without
comparing all pairs. The rule that decides whether two images are near-duplicates is in
tasks.checks.similarity."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import affine_transform, gaussian_filter

HASH_BITS = 64
_LOW = 8  # the hash keeps the 8x8 lowest frequencies of a 32x32 DCT
ALIGNED_SIDE = 32  # the aligned grey copy is ALIGNED_SIDE x ALIGNED_SIDE
_WORKING_SIDE = 64  # larger images are box-reduced to about this before aligning (cost, not result)
HASH_BLUR = 1.0  # the aligned copy is blurred (sigma, px) before hashing: sub-pixel moves flip fewer bits
# corner triangles (legs this share of each side) take the border colour before aligning: a copy turned
# by a few degrees has its corners filled (PIL: black), which on a coloured background outweighs a
# low-contrast picture in every comparison of the copies. Tuned on the 64 px colour draw of Fashion's
# train part (seed 100): rotations found 6 -> 9 of 10 with 0.1, 0.15 or 0.2, no other figure of clean
# moved; on its grey draw nothing moved (BENCHMARKS.md, "in colour")
CORNER_BLANK = 0.1


def aligned_copy(gray: Image.Image) -> np.ndarray:
    """float32 [ALIGNED_SIDE, ALIGNED_SIDE]: the grey image scaled so its longer side spans the copy,
    moved (with sub-pixel precision) so that the centre of mass of its difference from the border
    colour sits in the middle. A copy shifted by a pixel or two, or resized, or re-encoded, lands on
    (almost) the same copy; what was cut off or rotated still differs."""
    gray = gray.convert("L")
    if max(gray.size) > _WORKING_SIDE:
        factor = _WORKING_SIDE / max(gray.size)
        gray = gray.resize(
            (max(1, round(gray.width * factor)), max(1, round(gray.height * factor))), Image.Resampling.BOX
        )
    g = np.asarray(gray, dtype=np.float64)
    h, w = g.shape
    background = np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    if CORNER_BLANK > 0:
        u, v = yy / h, xx / w
        to_corner = np.minimum(u, 1 - u) + np.minimum(v, 1 - v)  # of the nearest corner, in shares of the sides
        g = np.where(to_corner < CORNER_BLANK, background, g)
    weight = np.abs(g - background)
    total = weight.sum()
    cy, cx = ((weight * yy).sum() / total, (weight * xx).sum() / total) if total > 0 else (h / 2, w / 2)
    scale = max(h, w) / ALIGNED_SIDE  # input pixels per output pixel
    if scale > 1:
        g = gaussian_filter(g, 0.5 * scale)  # anti-aliasing
    half = ALIGNED_SIDE / 2
    offset = np.array([cy - half * scale - 0.5 + 0.5 * scale, cx - half * scale - 0.5 + 0.5 * scale])
    out = affine_transform(
        g, np.diag([scale, scale]), offset=offset, output_shape=(ALIGNED_SIDE,) * 2, order=1, mode="nearest"
    )
    # float16-exact (an error far below a grey level): clean holds 500k copies at 2 bytes a pixel
    # (tasks.checks.inspection_table) and every consumer sees the same values
    return out.astype(np.float16).astype(np.float32)


def aligned_hash(copy: np.ndarray) -> int:
    """The perceptual hash near-duplicate candidates are found by: phash of the blurred aligned copy."""
    return phash_from_dct(dct32(gaussian_filter(np.asarray(copy, dtype=np.float64), HASH_BLUR)))


def dct32(gray32: np.ndarray) -> np.ndarray:
    """2-D orthonormal DCT-II of a 32x32 grayscale image (float)."""
    return dctn(np.asarray(gray32, dtype=np.float64), type=2, norm="ortho")


def phash_from_dct(coeffs: np.ndarray) -> int:
    """Bit i is set when low-frequency coefficient i is above their median. A brightness change moves
    only the DC term, which stays above the median either way, so it leaves the hash unchanged."""
    low = coeffs[:_LOW, :_LOW].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def as_int64(value: int) -> int:
    """The same 64 bits as a signed int64 (Parquet has no uint64 everyone reads)."""
    return int(np.array(value, dtype=np.uint64).view(np.int64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int64)


# candidate pairs Hamming-checked at once: memory stays bounded (~100 MB) however many images share a
# chunk value (70k Fashion-MNIST images give tens of millions of candidates, almost all rejected)
_BLOCK_PAIRS = 1 << 21


def _chunk_keys(hashes: np.ndarray, radius: int) -> Iterator[np.ndarray]:
    """Per multi-index chunk: each hash's value on that chunk of bits (radius + 1 disjoint chunks)."""
    chunks = min(radius + 1, HASH_BITS)
    bounds = np.linspace(0, HASH_BITS, chunks + 1).astype(np.uint64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield (hashes >> lo) & np.uint64((1 << int(hi - lo)) - 1)


def _bucket_blocks(members: np.ndarray) -> Iterator[np.ndarray]:
    """Every pair (members[a], members[b]), a < b, of one bucket, in blocks of about _BLOCK_PAIRS."""
    size = len(members)
    first = 0
    while first < size - 1:
        per_row = size - 1 - np.arange(first, size - 1)  # row a pairs with every b > a
        rows_in_block = max(1, int(np.searchsorted(np.cumsum(per_row), _BLOCK_PAIRS, side="right")))
        rows = np.arange(first, first + rows_in_block)
        counts = per_row[:rows_in_block]
        a = np.repeat(rows, counts)
        b = a + 1 + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        yield np.stack([members[a], members[b]], axis=1)
        first += rows_in_block


class _CloseCollector:
    """Collects candidate blocks and keeps, block by block, only the pairs within `radius` bits, each
    as one int64 key (left * width + right; with `ordered`, the smaller index first). A pair that
    shares several chunks is found several times: the keys are made distinct whenever they have
    grown past twice the distinct count, so memory follows the distinct pairs (10.9M at 500k
    Fashion-MNIST images and variants: 87 MB of keys, where pairs kept as found took 1.6 GB)."""

    def __init__(self, left: np.ndarray, right: np.ndarray, radius: int, ordered: bool) -> None:
        self.left, self.right, self.radius, self.ordered = left, right, radius, ordered
        self.width = np.int64(max(len(right), 1))
        self.pending: list[np.ndarray] = []
        self.pending_pairs = 0
        self.keys: list[np.ndarray] = []
        self.kept = self.distinct = 0

    def add(self, block: np.ndarray) -> None:
        self.pending.append(block)
        self.pending_pairs += len(block)
        if self.pending_pairs >= _BLOCK_PAIRS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            pairs = np.concatenate(self.pending).astype(np.int64)
            close = pairs[hamming(self.left[pairs[:, 0]], self.right[pairs[:, 1]]) <= self.radius]
            if self.ordered:
                close = np.sort(close, axis=1)
            self.keys.append(close[:, 0] * self.width + close[:, 1])
            self.kept += len(close)
            if self.kept > 2 * self.distinct + _BLOCK_PAIRS:
                self.keys = [np.unique(np.concatenate(self.keys))]
                self.kept = self.distinct = len(self.keys[0])
        self.pending, self.pending_pairs = [], 0

    def result(self) -> np.ndarray:
        """The distinct pairs, sorted, int64 [k, 2]."""
        self.flush()
        keys = np.unique(np.concatenate(self.keys)) if self.keys else np.empty(0, dtype=np.int64)
        return np.stack([keys // self.width, keys % self.width], axis=1)


def radius_pairs(hashes: np.ndarray, radius: int) -> np.ndarray:
    """All index pairs (i < j) whose hashes differ in at most `radius` bits, as an int64 array [k, 2].

    Multi-index hashing: split the 64 bits into radius+1 disjoint chunks. Two hashes within `radius`
    bits must agree exactly on at least one chunk (pigeonhole), so only hashes sharing a chunk value
    are compared; the candidates are checked with the full Hamming distance a block at a time."""
    hashes = np.asarray(hashes).astype(np.uint64)
    n = len(hashes)
    if n < 2 or radius < 0:
        return np.empty((0, 2), dtype=np.int64)
    found = _CloseCollector(hashes, hashes, radius, ordered=True)
    for keys in _chunk_keys(hashes, radius):
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            for block in _bucket_blocks(order[start : start + size]):
                found.add(block)
    return found.result()


def radius_pairs_between(new: np.ndarray, known: np.ndarray, radius: int) -> np.ndarray:
    """All pairs (i into `new`, j into `known`) whose hashes differ in at most `radius` bits, sorted,
    int64 [k, 2]: the same multi-index search as radius_pairs, but only new hashes are looked up in
    the known ones, so the cost follows what is new (clean's near-duplicate index)."""
    new = np.asarray(new).astype(np.uint64)
    known = np.asarray(known).astype(np.uint64)
    if not len(new) or not len(known) or radius < 0:
        return np.empty((0, 2), dtype=np.int64)
    found = _CloseCollector(new, known, radius, ordered=False)
    for known_keys, new_keys in zip(_chunk_keys(known, radius), _chunk_keys(new, radius)):
        order = np.argsort(known_keys, kind="stable")
        sorted_keys = known_keys[order]
        first = np.searchsorted(sorted_keys, new_keys, side="left")
        count = np.searchsorted(sorted_keys, new_keys, side="right") - first
        # new hashes a block at a time, so the candidates of one block stay about _BLOCK_PAIRS
        edges = np.searchsorted(np.cumsum(count), np.arange(_BLOCK_PAIRS, count.sum() + _BLOCK_PAIRS, _BLOCK_PAIRS))
        lo = 0
        for hi in np.unique(np.r_[np.minimum(edges + 1, len(new)), len(new)]):
            c, f = count[lo:hi], first[lo:hi]
            if c.sum():
                rows = np.repeat(np.arange(lo, hi), c)
                within = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
                found.add(np.stack([rows, order[np.repeat(f, c) + within]], axis=1))
            lo = hi
    return found.result()


def near_duplicate_groups(hashes, radius: int) -> np.ndarray:
    """Group id per hash: i and j share a group when a chain of pairs links them, each pair within
    `radius` bits (radius_pairs; no picture check: tasks.checks.similarity has the whole rule). The id
    is the position of the group's first member, so it is deterministic."""
    return groups_of_pairs(len(hashes), radius_pairs(np.asarray(hashes, dtype=np.int64), radius))


def groups_of_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per item 0..n-1, items linked by a chain of `pairs` ([k, 2] indices) sharing one: the
    position of the group's first member, so it is deterministic."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, component, np.arange(n))  # smallest member index of each component
    return first[component]
