"""Confident learning: our code (tasks/checks/confident_learning.py) vs cleanlab 2.9's
`cleanlab.filter.find_label_issues` on the SAME out-of-fold probabilities (issue 11, item 2).

    python -m bench.cleanlab_engine [--images 3000] [--seeds 0,1,2] [--flip 0.03] [--model ensemble]

Images: Fashion-MNIST's test part (never used to tune validate), a stratified draw per seed. Labels:
`--flip` of them changed, half to a uniformly random other class, half to a confusable class
(T-shirt <-> shirt, pullover <-> coat, sneaker <-> ankle boot, dress -> coat, sandal -> sneaker,
bag -> T-shirt, trouser -> dress). The out-of-fold probabilities come from validate's own models
(kernel + CNN ensemble by default, 5 folds, first round). Then every engine reads the same
probabilities; "+ floor" applies validate's max_given_probability (0.05) on top.

Since this comparison validate's rule IS cleanlab (tasks/checks/confident_learning.py calls
cleanlab.filter.find_label_issues), so the "own" rows of a run today are cleanlab too; the own-code
figures in BENCHMARKS.md were measured with the hand-written rule (commit b90ebe1 and before)."""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from bench import fashion
from bench.common import table, write_result
from tasks.checks.confident_learning import find_label_issues, kernel_features, kernel_model, out_of_fold_probabilities
from tasks.common.images import to_array

CONFUSABLE = {0: 6, 6: 0, 2: 4, 4: 2, 7: 9, 9: 7, 3: 4, 5: 7, 8: 0, 1: 3}
FLOOR = 0.05  # validate.suspect_label.max_given_probability's default


def draw(images: np.ndarray, labels: np.ndarray, n: int, flip: float, seed: int):
    rng = np.random.default_rng(seed)
    per_class = n // 10
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    truth = labels[picked].astype(np.int64)
    noisy = truth.copy()
    flipped = rng.choice(len(picked), int(round(flip * len(picked))), replace=False)
    half = len(flipped) // 2
    for k in flipped[:half]:  # uniform: any other class
        noisy[k] = (truth[k] + rng.integers(1, 10)) % 10
    for k in flipped[half:]:
        noisy[k] = CONFUSABLE[int(truth[k])]
    return images[picked], truth, noisy


def probabilities(images: np.ndarray, noisy: np.ndarray, model: str, seed: int) -> np.ndarray:
    pil = [Image.fromarray(img, mode="L") for img in images]
    members = []
    if model in ("kernel", "ensemble"):
        members.append(kernel_model(kernel_features(pil, 16), seed))
    if model in ("cnn", "ensemble"):
        from tasks.checks.oof_cnn import cnn_model

        members.append(cnn_model(np.stack([to_array(p, 32, 3) for p in pil]), epochs=8, budget=100000, seed=seed))
    return out_of_fold_probabilities(members, noisy, 5, seed)


def engines(probs: np.ndarray, noisy: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues as cleanlab_issues

    given = probs[np.arange(len(noisy)), noisy]
    out = {}
    for method in ("prune_by_noise_rate", "both", "confident_joint"):
        started = time.perf_counter()
        mask = find_label_issues(probs, noisy, method, 1.0)
        out[f"own {method}"] = (mask, time.perf_counter() - started)
    for filter_by in ("prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given"):
        started = time.perf_counter()
        mask = cleanlab_issues(labels=noisy, pred_probs=probs, filter_by=filter_by, n_jobs=1)
        out[f"cleanlab {filter_by}"] = (mask, time.perf_counter() - started)
    for name in list(out):
        mask, seconds = out[name]
        out[f"{name} + floor"] = (mask & (given < FLOOR), seconds)
    return out


def score(mask: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    found = int((mask & wrong).sum())
    return found / max(int(wrong.sum()), 1), found / max(int(mask.sum()), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanlab_engine")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--flip", type=float, default=0.03)
    parser.add_argument("--model", default="ensemble", choices=["kernel", "cnn", "ensemble"])
    parser.add_argument("--out", default="bench/results/cleanlab_engine.json")
    args = parser.parse_args(argv)
    images, labels = fashion.load("test")
    per_seed: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        started = time.perf_counter()
        imgs, truth, noisy = draw(images, labels, args.images, args.flip, seed)
        probs = probabilities(imgs, noisy, args.model, seed)
        wrong = truth != noisy
        per_seed[seed] = {
            "oof_seconds": round(time.perf_counter() - started, 1),
            "flipped": int(wrong.sum()),
            "engines": {
                name: {"recall": r, "precision": p, "flagged": int(mask.sum()), "seconds": round(s, 4)}
                for name, (mask, s) in engines(probs, noisy).items()
                for r, p in [score(mask, wrong)]
            },
        }
        print(seed, per_seed[seed]["oof_seconds"], "s", flush=True)
    names = list(next(iter(per_seed.values()))["engines"])
    mean = {
        name: {
            key: round(float(np.mean([s["engines"][name][key] for s in per_seed.values()])), 4)
            for key in ("recall", "precision", "flagged", "seconds")
        }
        for name in names
    }
    print(
        table(
            ["engine", "recall", "precision", "flagged", "seconds"],
            [[n, m["recall"], m["precision"], m["flagged"], m["seconds"]] for n, m in mean.items()],
        )
    )
    write_result({"args": vars(args), "per_seed": per_seed, "mean": mean}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
