"""How many nearest neighbours per descriptor (tasks.checks.registration.K_NEAREST) and which
pre-filter before registration (tasks.checks.similarity.SHADE_PREFILTER, plain or zoom-aware): clean's
near-duplicate rule as built (near_duplicate_pairs, images in a shuffled order as clean's image ids
give), with those two knobs set, on one bench.near_duplicates set. Tuned on a draw of Fashion-MNIST's
train part with many copies of each kind (100: a kind's recall moves in steps of 0.01), reported on
its test part by bench.near_duplicate_registration and bench.data_quality (issue 11, BENCHMARKS.md,
"zoom-aware pre-filter, 8 nearest").

Per setting: recall per kind, pairs joining two different pictures, the pairs registered (those that
pass the pre-filter) and the rule's seconds.

    python -m bench.near_duplicate_knobs [--part train] [--seed 101] [--per-kind 100]
        [--settings 5:0.8:plain,8:0.8:zoom]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from bench.near_duplicate_registration import per_kind
from bench.near_duplicates import Own, digits_arrays, fashion_arrays, make_set
from tasks.checks import registration, similarity

DEFAULT_SETTINGS = "5:0.8:plain,5:0.8:zoom,5:0.85:zoom,8:0.8:plain,8:0.8:zoom,8:0.85:zoom,12:0.8:zoom"


def _plain(copies, pairs, max_shift=similarity.MAX_SHIFT, enough=np.inf):
    """The pre-filter before 2026-11-29's zoom-aware one: the plain similarity."""
    return similarity.similarity(copies, pairs, max_shift)


def measure_setting(own: Own, s, order: np.ndarray, k: int, prefilter: float, kind: str) -> dict:
    """The rule as built with K_NEAREST = k and the given pre-filter (restored afterwards)."""
    saved = registration.K_NEAREST, similarity.SHADE_PREFILTER, similarity.zoom_similarity, similarity.shade_verified
    registered = []

    def counting(copies, pairs, rows=None):
        registered.append(len(pairs))
        return saved[3](copies, pairs, rows)

    registration.K_NEAREST, similarity.SHADE_PREFILTER, similarity.shade_verified = k, prefilter, counting
    if kind == "plain":
        similarity.zoom_similarity = _plain
    try:
        started = time.perf_counter()
        found = similarity.near_duplicate_pairs(
            own.hashes[order], own.copies[order], similarity.DEFAULT_RADIUS, similarity.DEFAULT_MIN_SIMILARITY
        )
        seconds = time.perf_counter() - started
    finally:
        registration.K_NEAREST, similarity.SHADE_PREFILTER, similarity.zoom_similarity, similarity.shade_verified = (
            saved
        )
    result = per_kind(s, np.sort(order[found], axis=1), np.ones(len(found), bool))
    return {**result, "registered_pairs": int(sum(registered)), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.near_duplicate_knobs", description=__doc__)
    parser.add_argument("--part", choices=("train", "test", "digits"), default="train")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="K:prefilter:plain|zoom, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_duplicate_knobs.json"))
    args = parser.parse_args(argv)
    images, labels = digits_arrays() if args.part == "digits" else fashion_arrays(args.part)
    s = make_set(images, labels, args.n, args.per_kind, args.seed)
    own = Own(s)
    order = np.random.default_rng(args.seed).permutation(len(own.copies))
    settings = {}
    for setting in args.settings.split(","):
        k, prefilter, kind = setting.split(":")
        settings[setting] = measure_setting(own, s, order, int(k), float(prefilter), kind)
        row = settings[setting]
        short = {name: r for name, r in row["recall_per_kind"].items() if r < 1}
        print(
            f"K {k}, pre-filter {prefilter} ({kind}): recall {row['recall']}, wrong pairs {row['wrong_pairs']}, "
            f"registered {row['registered_pairs']}, {row['seconds']} s; below 1: {short}",
            flush=True,
        )
    write_result(
        {"part": args.part, "seed": args.seed, "n": args.n, "per_kind": args.per_kind, "settings": settings}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
