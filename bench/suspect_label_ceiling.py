"""How many planted label flips any model could find: validate's out-of-fold ranking against a CNN trained
on other, correctly labelled Fashion-MNIST images (issue 11's "flips >= 85 %").

validate can only learn from the draw itself: each out-of-fold model trains on two thirds of 3,000 images,
flips included. A reference CNN trained on 2,000 / 6,000 / 20,000 *other* images of Fashion's training
part, with their true labels, has more and cleaner data than validate could ever have. If it still
ranks some flips as plausible, those flips are ambiguous images, not a weakness of validate's models.

Same draws as bench/suspect_label_epochs.py: 3 % flips, half uniform, half to the confusable class, from
Fashion's training part (the tuning part; the reference images are the rest of it) or, with `--part
test`, from its test part (the reference images are then drawn from the whole training part). Reported per model: accuracy on the true labels, average
precision of the given-label ranking, flips among the `planted` and the 1.1 x `planted` lowest given-label
probabilities, what validate's rule flags (found / flagged), and flips whose given label still gets
more than 0.1.

    python -m bench.suspect_label_ceiling [--part train|test] [--seeds 100 101] [--references 2000 6000 20000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import fashion
from bench.data_quality import drawn_indices
from bench.suspect_label_epochs import flipped_draw

PLAUSIBLE = 0.1  # a flip whose given label still gets this much is one the model finds believable


def ranking_row(model: str, probs: np.ndarray, given: np.ndarray, true: np.ndarray, kind: np.ndarray) -> dict:
    """How well `probs` [N, K] expose the flips (kind > 0) among labels `given`, with validate's rule."""
    from sklearn.metrics import average_precision_score

    from tasks.checks.confident_learning import find_label_issues
    from tasks.validate import SuspectLabelParams

    cfg = SuspectLabelParams()
    flip = kind > 0
    given_probability = probs[np.arange(len(given)), given]
    lowest = np.argsort(given_probability, kind="stable")
    planted = int(flip.sum())
    issues = find_label_issues(probs, given, cfg.method, cfg.max_given_probability, cfg.certain_below)
    return {
        "model": model,
        "accuracy_on_true_labels": round(float((probs.argmax(1) == true).mean()), 4),
        "average_precision": round(float(average_precision_score(flip, -given_probability)), 4),
        "planted": planted,
        "in_lowest_planted": int(flip[lowest[:planted]].sum()),
        "in_lowest_1.1x": int(flip[lowest[: int(round(1.1 * planted))]].sum()),
        "rule_found": int((issues & flip).sum()),
        "rule_flagged": int(issues.sum()),
        "flips_still_plausible": int((given_probability[flip] > PLAUSIBLE).sum()),
    }


def false_flags_doubted(flagged: np.ndarray, reference: np.ndarray, draw: dict) -> dict:
    """Of the images validate flagged (`flagged`, its fit's issues) that were not planted flips, how many
    the reference model also doubts (gives their given label less than PLAUSIBLE): Fashion-MNIST's own
    doubtful labels."""
    given = draw["given"]
    false_flags = flagged & (draw["kind"] == 0)
    doubted = reference[np.arange(len(given)), given] < PLAUSIBLE
    return {"validate_false_flags": int(false_flags.sum()), "of_them_doubted": int((false_flags & doubted).sum())}


def reference_pool(seed: int, n_draw: int, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion's training images outside the draw of `seed` (all of them when the draw is from the test
    part), and their labels as indices into the sorted class names (flipped_draw's numbering)."""
    images, labels = fashion.load("train")
    drawn = drawn_indices(len(labels), n_draw, seed) if part == "train" else []
    outside = np.setdiff1d(np.arange(len(labels)), drawn)
    numbering = np.array([sorted(fashion.CLASSES).index(name) for name in fashion.CLASSES])
    return images[outside], numbering[labels[outside]]


def cnn_inputs(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    from tasks.common.images import to_array

    return np.stack([to_array(Image.fromarray(a), 32, 3) for a in images])[..., :1].copy()


def reference_probabilities(draw: dict, images: np.ndarray, labels: np.ndarray, epochs: int) -> np.ndarray:
    """validate's CNN (tasks.checks.oof_cnn) trained on `images` with their true labels, scoring the draw."""
    from tasks.checks.oof_cnn import cnn_model

    data = np.concatenate([draw["cnn"], cnn_inputs(images)])
    targets = np.concatenate([draw["given"], labels])  # the draw's rows are never trained on
    member = cnn_model(data, epochs=epochs, budget=len(images) * epochs, seed=0)
    k = int(targets.max()) + 1
    fitted = member.fit(targets, np.arange(len(draw["cnn"]), len(data)), k)
    return member.predict(fitted, draw["cnn"], k)


def measure(seed: int, n: int, flip_fraction: float, references: list[int], part: str = "train") -> list[dict]:
    from tasks.validate import SuspectLabelParams, fit_with_params, out_of_fold_members

    draw = flipped_draw(seed, n, flip_fraction, part)

    def row(model: str, probs: np.ndarray) -> dict:
        return {"part": part, "seed": seed, **ranking_row(model, probs, draw["given"], draw["true"], draw["kind"])}

    cfg = SuspectLabelParams()
    start = time.perf_counter()
    fit = fit_with_params(out_of_fold_members(draw, cfg), draw["given"], cfg)
    oof = fit.probs
    rows = [
        {
            **row("validate: out-of-fold ensemble (params defaults)", oof),
            "seconds": round(time.perf_counter() - start, 1),
        }
    ]
    pool_images, pool_labels = reference_pool(seed, n, part)
    rng = np.random.default_rng(seed + 11)
    for size in references:
        chosen = rng.choice(len(pool_labels), size, replace=False)
        epochs = 30 if size <= 6000 else 15  # about the same number of steps as the others at most
        start = time.perf_counter()
        probs = reference_probabilities(draw, pool_images[chosen], pool_labels[chosen], epochs)
        seconds = round(time.perf_counter() - start, 1)
        name = f"reference CNN: {size} other images, true labels, {epochs} epochs"
        rows.append({**row(name, probs), **false_flags_doubted(fit.issues, probs, draw), "seconds": seconds})
        rows.append(row("  the same averaged with validate's ensemble", 0.5 * probs + 0.5 * oof))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["train", "test"], default="train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--references", type=int, nargs="+", default=[2000, 6000, 20000])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--flip-fraction", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=Path("bench/results/suspect_label_ceiling.json"))
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for row in measure(seed, args.n, args.flip_fraction, args.references, args.part):
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"n": args.n, "flip_fraction": args.flip_fraction, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
