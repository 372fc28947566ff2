"""clean's incremental near-duplicate search after images leave the data, against a full search of what
remains (tasks.checks.inspection_cache.NearIndex.ranks_for, tasks.checks.similarity.pairs_with_new).

A first run searches `--first` images of a Fashion-MNIST draw with 10 planted copies of each
near-duplicate kind (bench.planted); its index is saved and loaded as clean does. Then `--leave` of
them leave and the rest of the draw arrives. Reported: pairs a full search of the final images finds
that the incremental search misses (and the other way round), and the incremental search's seconds,
once with the known images' kept floors only (before) and once with the images that kept a leaving
neighbour searching again (now).

    python -m bench.near_index_removals [--n 3000] [--first 2800] [--leave 280] [--seed 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data_quality import fashion_base
from bench.planted import NEAR_DUPLICATE_KINDS, near_duplicate

COPIES_PER_KIND = 10


def planted_copies(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(aligned copies [m, S*S], aligned hashes [m]) of n test-part images and their planted copies."""
    from PIL import Image

    from tasks.checks.phash import aligned_copy, aligned_hash
    from tasks.common.images import decode

    rng = np.random.default_rng(seed)
    arrays = [a for a, _ in fashion_base(n, seed, "test")]
    kinds = [kind for kind in NEAR_DUPLICATE_KINDS for _ in range(COPIES_PER_KIND)]
    originals = rng.choice(len(arrays), len(kinds), replace=False)
    made = [np.asarray(decode(near_duplicate(arrays[i], kind, rng)).convert("L")) for i, kind in zip(originals, kinds)]
    copies = np.stack([aligned_copy(Image.fromarray(a).convert("L")).ravel() for a in [*arrays, *made]])
    hashes = np.array([aligned_hash(c.reshape(32, 32)) for c in copies], dtype=np.uint64)
    return copies.astype(np.float32), hashes


def measure(n: int, first_n: int, leave: int, seed: int) -> dict:
    from tasks.checks import inspection_cache
    from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, DEFAULT_RADIUS, pairs_with_new

    def search(rows: np.ndarray, new: np.ndarray, **kwargs) -> tuple[np.ndarray, object]:
        return pairs_with_new(hashes[rows], copies[rows], new, DEFAULT_RADIUS, DEFAULT_MIN_SIMILARITY, **kwargs)

    copies, hashes = planted_copies(n, seed)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(copies))
    first = np.sort(order[:first_n])
    final = np.sort(np.concatenate([np.setdiff1d(first, rng.choice(first, leave, replace=False)), order[first_n:]]))
    names = np.array([f"image{k:06d}" for k in range(len(copies))], dtype=object)
    pairs, ranks = search(first, np.ones(len(first), bool))
    with tempfile.TemporaryDirectory() as tmp:
        index_file = Path(tmp) / inspection_cache.NEAR_INDEX_FILE
        by_name = pd.DataFrame({"a": names[first][pairs[:, 0]], "b": names[first][pairs[:, 1]]})
        inspection_cache.save_near_index(index_file, "bench", list(names[first]), by_name, ranks)
        index = inspection_cache.load_near_index(index_file, "bench")
    now = list(names[final])
    new, known_ranks, search_again = index.ranks_for(now)
    position = {name: k for k, name in enumerate(now)}
    kept = {
        (position[a], position[b])
        for a, b in zip(index.pairs["a"], index.pairs["b"])
        if a in position and b in position
    }
    full = set(map(tuple, search(final, np.ones(len(final), bool))[0].tolist()))
    row = {
        "images_first_run": len(first),
        "left": leave,
        "arrived": int(new.sum()),
        "searched_again": int(search_again.sum()),
        "full_search_pairs": len(full),
    }
    for label, again in [("kept_floors_only", None), ("searching_again", search_again)]:
        start = time.perf_counter()
        added, _ = search(final, new, ranks=known_ranks, search_again=again)
        seconds = time.perf_counter() - start
        found = kept | set(map(tuple, added.tolist()))
        row[label] = {"missed": len(full - found), "extra": len(found - full), "seconds": round(seconds, 2)}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--first", type=int, default=2800)
    parser.add_argument("--leave", type=int, nargs="+", default=[28, 280])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_index_removals.json"))
    args = parser.parse_args(argv)
    rows = []
    for leave in args.leave:
        rows.append({"seed": args.seed, **measure(args.n, args.first, leave, args.seed)})
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"n": args.n, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
