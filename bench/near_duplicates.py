"""Near-duplicate benchmark: per-kind recall and pair precision of the near-duplicate rule
(tasks.checks.similarity) against the rule it replaced and against imagededup's hashes.

A set = n clean images + per_kind originals of each bench.planted.NEAR_DUPLICATE_KINDS kind with one
planted copy each, every file decoded by tasks.common.images exactly as clean does. A verified pair
is right when it joins a copy and its original; every other pair (two different pictures, mostly
look-alikes of one class) is wrong. Thresholds are tuned on sets drawn from Fashion-MNIST's TRAIN
part only (best recall at pair precision >= --target-precision), then reported on its TEST part
(3 seeds) and on sklearn's digits (upscaled 4x like sample:digits).

    python -m bench.near_duplicates [--n 3000] [--per-kind 10] [--out bench/results/near_duplicates.json]
    python -m bench.near_duplicates --quick      # n=400, 4 per kind, imagededup skipped: a smoke run"""

from __future__ import annotations

import argparse
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench import fashion
from bench.planted import NEAR_DUPLICATE_KINDS, near_duplicate
from tasks.checks.phash import dct32, phash_from_dct, radius_pairs
from tasks.checks.quality import _gray32, inspect, thumbnail
from tasks.checks.similarity import DEFAULT_MIN_SIMILARITY, DEFAULT_RADIUS, similarity
from tasks.common.images import decode

RADII = (4, 6, 8)
THRESHOLDS = np.round(np.arange(0.950, 0.9995, 0.0025), 4)
IMAGEDEDUP_METHODS = ("PHash", "DHash", "WHash")
IMAGEDEDUP_DISTANCES = (0, 2, 4, 6, 8, 10, 12)


@dataclass
class PlantedSet:
    images: list[Image.Image]  # decoded, as clean sees them
    files: list[bytes]
    labels: np.ndarray
    original: np.ndarray  # per image: index of its original (-1 for a clean image)
    kind: np.ndarray  # per image: planted kind ("" for a clean image)


def fashion_arrays(part: str) -> tuple[np.ndarray, np.ndarray]:
    return fashion.load(part)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [
        np.asarray(
            Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
        )
        for img in digits.images
    ]
    return np.stack(images), digits.target


def make_set(images: np.ndarray, labels: np.ndarray, n: int, per_kind: int, seed: int) -> PlantedSet:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), min(n, len(labels)), replace=False)
    files = [_png(images[i]) for i in pick]
    lab, original, kind = list(labels[pick]), [-1] * len(pick), [""] * len(pick)
    slot = 0
    for name in NEAR_DUPLICATE_KINDS:
        for _ in range(per_kind):
            files.append(near_duplicate(images[pick[slot]], name, rng))
            lab.append(labels[pick[slot]])
            original.append(slot)
            kind.append(name)
            slot += 1
    return PlantedSet(
        [decode(f) for f in files], files, np.array(lab), np.array(original), np.array(kind, dtype=object)
    )


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _is_right(s: PlantedSet, pairs: np.ndarray) -> np.ndarray:
    a, b = pairs[:, 0], pairs[:, 1]
    return (s.original[a] == b) | (s.original[b] == a)


def evaluate(s: PlantedSet, pairs: np.ndarray) -> dict:
    """Per-kind recall (the copy paired with its original) and the precision of all pairs found."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    right = _is_right(s, pairs)
    found = set(pairs[right].max(axis=1).tolist())  # a copy's index is above its original's
    copies = np.flatnonzero(s.original >= 0)
    per_kind = {}
    for name in NEAR_DUPLICATE_KINDS:
        members = copies[s.kind[copies] == name]
        if len(members):
            per_kind[name] = round(float(np.mean([m in found for m in members])), 4)
    hits = int(right.sum())
    return {
        "recall": round(hits / max(len(copies), 1), 4),
        "precision": round(hits / len(pairs), 4) if len(pairs) else None,
        "pairs": len(pairs),
        "wrong_pairs": int(len(pairs) - hits),
        "recall_per_kind": per_kind,
    }


class Own:
    """tasks.checks.similarity over the Inspection clean computes (aligned copy + its hash)."""

    def __init__(self, s: PlantedSet):
        started = time.perf_counter()
        found = [inspect(f, 2**31) for f in s.files]
        self.hashes = np.array([i.phash for i in found], dtype=np.uint64)
        self.copies = np.stack([i.thumbnail for i in found])
        self.encode_seconds = time.perf_counter() - started

    def scored(self, radius: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = radius_pairs(self.hashes, radius)
        return pairs, similarity(self.copies, pairs)


class Previous:
    """The rule this replaced: 64-bit phash of the 32x32 box copy within 4 bits + 16x16 thumbnail
    correlation >= 0.99."""

    def __init__(self, s: PlantedSet):
        started = time.perf_counter()
        gray32 = [_gray32(img.convert("L")) for img in s.images]
        self.hashes = np.array([phash_from_dct(dct32(g)) for g in gray32], dtype=np.uint64)
        self.thumbs = np.stack([thumbnail(g, 16).ravel() for g in gray32])
        self.encode_seconds = time.perf_counter() - started

    def pairs(self) -> np.ndarray:
        pairs = radius_pairs(self.hashes, 4)
        t = self.thumbs - self.thumbs.mean(1, keepdims=True)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
        return pairs[np.einsum("ij,ij->i", t[pairs[:, 0]], t[pairs[:, 1]]) >= 0.99]


def _imagededup_hashing():
    """imagededup.methods.hashing without imagededup.methods/__init__, which builds its CNN class at
    import and so downloads MobileNet weights (fails offline, and is not wanted for hashing)."""
    import imagededup

    if "imagededup.methods" not in sys.modules:
        pkg = types.ModuleType("imagededup.methods")
        pkg.__path__ = [str(Path(imagededup.__file__).parent / "methods")]
        sys.modules["imagededup.methods"] = pkg
    from imagededup.methods import hashing

    return hashing


def imagededup_pairs(s: PlantedSet, method: str, distances) -> tuple[dict[int, np.ndarray], float, float]:
    hashing = _imagededup_hashing()
    hasher = getattr(hashing, method)(verbose=False)
    started = time.perf_counter()
    encodings = {
        str(i): hasher.encode_image(image_array=np.asarray(img.convert("L"))) for i, img in enumerate(s.images)
    }
    encode_seconds = time.perf_counter() - started
    out, search_seconds = {}, 0.0
    for d in distances:
        started = time.perf_counter()
        found = hasher.find_duplicates(
            encoding_map=encodings, max_distance_threshold=d, num_dist_workers=1, num_enc_workers=1
        )
        search_seconds = time.perf_counter() - started
        pairs = {tuple(sorted((int(k), int(v)))) for k, vs in found.items() for v in vs}
        out[d] = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return out, encode_seconds, search_seconds


def tune(curves: dict, target_precision: float) -> tuple:
    """The setting with the best recall at precision >= target (ties: the stricter setting)."""
    ok = [
        (r["recall"], -i, key) for i, (key, r) in enumerate(curves.items()) if (r["precision"] or 0) >= target_precision
    ]
    if not ok:
        return max(curves, key=lambda key: curves[key]["precision"] or 0)
    return max(ok)[2]


def own_curves(s: PlantedSet, own: Own) -> dict:
    curves = {}
    for radius in RADII:
        pairs, sims = own.scored(radius)
        for t in THRESHOLDS:
            curves[(radius, float(t))] = evaluate(s, pairs[sims >= t])
    return curves


def measure(args) -> dict:
    result: dict = {"n": args.n, "per_kind": args.per_kind, "target_precision": args.target_precision, "sets": {}}
    engines = [] if args.quick else list(IMAGEDEDUP_METHODS)
    # --- tune on Fashion-MNIST train ---
    train_images, train_labels = fashion_arrays("train")
    tuning = make_set(train_images, train_labels, args.n, args.per_kind, seed=100)
    own = Own(tuning)
    curves = own_curves(tuning, own)
    radius, threshold = tune(curves, args.target_precision)
    result["tuned"] = {
        "radius": radius,
        "min_similarity": threshold,
        "on": "fashion train seed 100",
        **curves[(radius, threshold)],
    }
    result["defaults"] = {"radius": DEFAULT_RADIUS, "min_similarity": DEFAULT_MIN_SIMILARITY}
    result["train_curve"] = {f"r{r}@{t}": {k: v[k] for k in ("recall", "precision")} for (r, t), v in curves.items()}
    tuned_dedup = {}
    for method in engines:
        found, _, _ = imagededup_pairs(tuning, method, IMAGEDEDUP_DISTANCES)
        dcurves = {d: evaluate(tuning, p) for d, p in found.items()}
        tuned_dedup[method] = tune(dcurves, args.target_precision)
    result["imagededup_tuned_distance"] = tuned_dedup
    # --- report on Fashion-MNIST test (3 seeds) and digits ---
    test_images, test_labels = fashion_arrays("test")
    sets = {f"fashion_test_seed{seed}": (test_images, test_labels, seed) for seed in args.seeds}
    digit_images, digit_labels = digits_arrays()
    sets["digits"] = (digit_images, digit_labels, 0)
    plot_curves = {"fashion_train_seed100": curves}
    for name, (images, labels, seed) in sets.items():
        s = make_set(images, labels, args.n, args.per_kind, seed)
        own = Own(s)
        started = time.perf_counter()
        pairs, sims = own.scored(radius)
        chosen = evaluate(s, pairs[sims >= threshold])
        search = time.perf_counter() - started
        row = {
            "images": len(s.files),
            "own": {**chosen, "seconds": round(own.encode_seconds + search, 2), "search_seconds": round(search, 3)},
        }
        prev = Previous(s)
        started = time.perf_counter()
        row["previous_rule"] = {
            **evaluate(s, prev.pairs()),
            "seconds": round(prev.encode_seconds + time.perf_counter() - started, 2),
        }
        for method in engines:
            found, enc, srch = imagededup_pairs(s, method, [tuned_dedup[method]])
            row[f"imagededup_{method}"] = {
                **evaluate(s, found[tuned_dedup[method]]),
                "max_distance_threshold": tuned_dedup[method],
                "seconds": round(enc + srch, 2),
            }
        if name in ("fashion_test_seed0", "digits"):
            plot_curves[name] = own_curves(s, own)
        result["sets"][name] = row
    result["pr_curves"] = {
        name: [
            {"radius": r, "min_similarity": t, "recall": v["recall"], "precision": v["precision"]}
            for (r, t), v in c.items()
        ]
        for name, c in plot_curves.items()
    }
    return result


def plot(result: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.common.atomic import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    radius = result["tuned"]["radius"]
    for (name, points), colour in zip(result["pr_curves"].items(), ("#4c72b0", "#dd8452", "#55a868", "#c44e52")):
        pts = [p for p in points if p["radius"] == radius and p["precision"] is not None]
        ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], marker=".", color=colour, label=name)
        chosen = [p for p in pts if p["min_similarity"] == result["tuned"]["min_similarity"]]
        if chosen:
            ax.scatter([chosen[0]["recall"]], [chosen[0]["precision"]], s=80, facecolors="none", edgecolors=colour)
    for name, row in result["sets"].items():
        if name == "fashion_test_seed0":
            for engine, marker in (("previous_rule", "x"), *((f"imagededup_{m}", "^") for m in IMAGEDEDUP_METHODS)):
                if engine in row and row[engine]["precision"] is not None:
                    ax.scatter(
                        [row[engine]["recall"]], [row[engine]["precision"]], marker=marker, label=f"{engine} (test 0)"
                    )
    ax.set_xlabel("recall (planted copies paired with their original)")
    ax.set_ylabel("pair precision")
    ax.set_title(f"near-duplicate verification threshold (radius {radius}); circle = tuned on train")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.near_duplicates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--per-kind", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target-precision", type=float, default=1.0)  # a wrong pair loses a good image
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_duplicates.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.per_kind, args.seeds = 400, 4, [0]
    result = measure(args)
    from tasks.common.atomic import write_json

    write_json(result, args.out)
    plot(result, args.out.with_name(args.out.stem + "_pr.png"))
    print(f"tuned on train: {result['tuned']['radius']} bits, similarity >= {result['tuned']['min_similarity']}")
    for name, row in result["sets"].items():
        for engine, r in row.items():
            if isinstance(r, dict):
                print(
                    f"{name:22s} {engine:20s} recall {r['recall']:.3f} precision {r['precision']} "
                    f"wrong pairs {r['wrong_pairs']} seconds {r['seconds']}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
