"""Near-duplicates made by cropping, rotating or shifting: can candidates from nearest neighbours and a
verification by affine registration find them without pairing look-alikes? (issue 11; BENCHMARKS.md.
Registration alone was not adopted; the shade rule below is clean's since 2026-11-29, in
tasks/checks/registration.py with one start and fewer steps.)

On a bench.near_duplicates set (n images + per_kind planted copies of every kind), from the aligned
copies clean keeps (tasks.checks.phash.aligned_copy):
- candidates: the clean rule's hash neighbours (radius 6) plus the k nearest neighbours of every image by
  the correlation of an 8x8 blurred descriptor, of the aligned copy and of a copy whose content box is
  stretched to a fixed size (a crop is a zoom of the content box), and (since 2026-11-29's third change)
  of the copy zoomed in by tasks.checks.registration.ZOOMS against the others' plain descriptor;
- verification: the clean rule's similarity (tasks.checks.similarity), and a registered similarity:
  an affine warp (6 parameters, plus gain and offset) fitted by Gauss-Newton on blurred copies
  (sigma 1.5, then 0.8), started from no warp and from the warp between the content boxes, the better
  kept; the correlation of the registered copies (blur 0.8) inside a 3 px margin, where aligned_copy's
  edge padding cannot count.
Reported: the candidates' recall per kind, and per rule "clean OR registered >= t" the recall per kind
and the pairs that join two different pictures. Also the shade rule (2026-11-29): the clean rule, or
registered correlation >= 0.98 with a mean absolute grey-level difference of the registered copies
of at most d. A copy that was moved, cut or turned keeps its shades; two different garments that
register onto each other do not. And the rule as clean runs it (tasks.checks.similarity.near_duplicate_pairs: its own candidates and
pre-filter, one start, fewer steps, residuals Cauchy-weighted since 2026-11-29's second change, padding
left out and both frames since the third), over the images in a shuffled order as clean's image ids
give.

    python -m bench.near_duplicate_registration [--part train] [--seed 100] [--per-kind 20]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from bench.near_duplicates import Own, digits_arrays, fashion_arrays, make_set
from tasks.checks.phash import ALIGNED_SIDE as S
from tasks.checks.phash import radius_pairs
from tasks.checks.registration import (
    _C,
    MATCHED_AGAINST,
    content_box,
    descriptors,
    register,
    registered,
)
from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, DEFAULT_RADIUS, near_duplicate_pairs, similarity

K_NEAREST, DESCRIPTOR_FLOOR = 5, 0.8
THRESHOLDS = (0.997, 0.998, 0.9985, 0.999)
# the shade rule (2026-11-29): registered correlation above a floor AND a small mean absolute
# grey-level difference of the registered copies (grey levels of 255)
SHADED_FLOOR = 0.98
GREY_DIFFERENCES = (2.5, 3.0, 3.5, 4.0)
_BENCH_LEVELS = ((1.5, 6), (0.8, 4))  # what this bench measured with (clean: fewer steps, same recall)


def nearest_pairs(
    desc: np.ndarray, against: np.ndarray | None = None, k: int = K_NEAREST, floor: float = DESCRIPTOR_FLOOR
) -> np.ndarray:
    """Each image's k nearest by its `desc` row against the others' `against` rows (desc when None)."""
    against = desc if against is None else against
    out = []
    for start in range(0, len(desc), 2048):
        sims = desc[start : start + 2048] @ against.T
        rows = np.arange(start, start + len(sims))
        sims[np.arange(len(rows)), rows] = -2
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ok = np.take_along_axis(sims, idx, 1) >= floor
        a, b = np.broadcast_to(rows[:, None], idx.shape)[ok], idx[ok]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
    return np.unique(np.concatenate(out), axis=0)


def box_warp(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """The warp that maps a's content box onto b's (boxes [P, 4])."""
    sy, sx = box_b[:, 2] / np.maximum(box_a[:, 2], 1), box_b[:, 3] / np.maximum(box_a[:, 3], 1)
    centre = lambda box, i: box[:, i] + box[:, i + 2] / 2 - 0.5 - _C  # noqa: E731
    p = np.zeros((len(box_a), 6), np.float32)
    p[:, 0], p[:, 3] = sy, sx
    p[:, 4], p[:, 5] = centre(box_b, 0) - sy * centre(box_a, 0), centre(box_b, 1) - sx * centre(box_a, 1)
    return p


def best_registered(
    copies: np.ndarray, boxes: np.ndarray, pairs: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, registered_similarity of the better of the two starts (by correlation)."""
    similarity_out, difference_out = np.empty(len(pairs)), np.empty(len(pairs))
    identity = np.array([1, 0, 0, 1, 0, 0], np.float32)
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        a, b = copies[block[:, 0]], copies[block[:, 1]]
        starts = (np.tile(identity, (len(block), 1)), box_warp(boxes[block[:, 0]], boxes[block[:, 1]]))
        found = [registered(a, b, register(a, b, p, levels=_BENCH_LEVELS)) for p in starts]
        better = np.argmax([similarity for similarity, _ in found], axis=0)
        rows = np.arange(len(block))
        similarity_out[start : start + len(block)] = np.stack([f[0] for f in found])[better, rows]
        difference_out[start : start + len(block)] = np.stack([f[1] for f in found])[better, rows]
    return similarity_out, difference_out


def per_kind(s, pairs: np.ndarray, chosen: np.ndarray) -> dict:
    right = (s.original[pairs[:, 0]] == pairs[:, 1]) | (s.original[pairs[:, 1]] == pairs[:, 0])
    found = set(pairs[chosen & right].max(axis=1).tolist())
    copies = np.flatnonzero(s.original >= 0)
    kinds = {
        k: round(float(np.mean([c in found for c in copies[s.kind[copies] == k]])), 2)
        for k in dict.fromkeys(s.kind[copies])
    }
    return {
        "recall": round(len(found) / len(copies), 4),
        "wrong_pairs": int((chosen & ~right).sum()),
        "recall_per_kind": kinds,
    }


def candidates(own: Own) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(aligned copies [N, S, S], their content boxes [N, 4], the clean rule's hash-neighbour pairs, and
    every candidate pair: those plus each image's nearest neighbours by the plain and the
    box-stretched descriptor), sorted and unique."""
    copies = own.copies.reshape(len(own.copies), S, S).astype(np.float32)
    boxes = np.array([content_box(c) or (0.0, 0.0, float(S), float(S)) for c in copies], np.float32)
    hash_pairs = radius_pairs(own.hashes, DEFAULT_RADIUS)
    desc = descriptors(copies)  # plain, content-box-stretched and zoomed-in (against the plain)
    nearest = [nearest_pairs(desc[w], desc[MATCHED_AGAINST[w]]) for w in range(len(desc))]
    return copies, boxes, hash_pairs, np.unique(np.concatenate([*nearest, hash_pairs]), axis=0)


def measure(part: str, seed: int, n: int, per_kind_count: int) -> dict:
    images, labels = digits_arrays() if part == "digits" else fashion_arrays(part)
    s = make_set(images, labels, n, per_kind_count, seed)
    own = Own(s)
    started = time.perf_counter()
    copies, boxes, hash_pairs, pairs = candidates(own)
    candidate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    plain = similarity(own.copies, pairs) >= DEFAULT_MIN_SIMILARITY
    registered, difference = best_registered(copies.reshape(len(copies), -1), boxes, pairs)
    verify_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # clean's whole rule, in clean's order (by image id, so a copy comes before its original about half
    # the time), with its similarity pre-filter
    order = np.random.default_rng(seed).permutation(len(copies))
    found = near_duplicate_pairs(own.hashes[order], own.copies[order], DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY)
    as_clean = np.sort(order[found], axis=1)
    clean_seconds = time.perf_counter() - started
    in_hash = np.zeros(len(pairs), bool)
    in_hash[
        np.searchsorted(pairs[:, 0] * len(copies) + pairs[:, 1], hash_pairs[:, 0] * len(copies) + hash_pairs[:, 1])
    ] = True
    rules = {
        "clean rule (hash radius 6, similarity >= 0.9875)": per_kind(s, pairs, plain & in_hash),
        "candidates (all pairs)": per_kind(s, pairs, np.ones(len(pairs), bool)),
        "clean similarity on all candidates": per_kind(s, pairs, plain),
    }
    for t in THRESHOLDS:
        rules[f"clean similarity OR registered >= {t}"] = per_kind(s, pairs, plain | (registered >= t))
    hash_rule = plain & in_hash
    for d in GREY_DIFFERENCES:
        shaded = (registered >= SHADED_FLOOR) & (difference <= d)
        rules[f"clean rule OR (registered >= {SHADED_FLOOR} AND grey difference <= {d})"] = per_kind(
            s, pairs, hash_rule | shaded
        )
    rules["clean's rule as built (near_duplicate_pairs)"] = per_kind(s, as_clean, np.ones(len(as_clean), bool))
    return {
        "part": part,
        "seed": seed,
        "n": n,
        "per_kind": per_kind_count,
        "candidate_pairs": {"hash radius 6": len(hash_pairs), "with nearest neighbours": len(pairs)},
        "seconds": {
            "candidates": round(candidate_seconds, 1),
            "verification": round(verify_seconds, 1),
            "clean_rule": round(clean_seconds, 1),
        },
        "rules": rules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicate_registration", description=__doc__)
    parser.add_argument("--part", choices=("train", "test", "digits"), default="train")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--per-kind", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_duplicate_registration.json"))
    args = parser.parse_args(argv)
    result = measure(args.part, args.seed, args.n, args.per_kind)
    for name, rule in result["rules"].items():
        weak = {k: v for k, v in rule["recall_per_kind"].items() if v < 0.9}
        print(f"{name}: recall {rule['recall']}, wrong pairs {rule['wrong_pairs']}; kinds below 0.9: {weak}")
    print(result["candidate_pairs"], result["seconds"])
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
