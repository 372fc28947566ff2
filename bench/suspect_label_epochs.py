"""How long validate's out-of-fold CNN should train: flips found against cnn_epochs, on draws of
Fashion-MNIST's training part only (the tuning part; the test part reports, bench/data_quality.py).

Each draw: `n` images, `flip_fraction` of them relabelled, half to a uniformly chosen other class and half
to the confusable class (bench.planted.nearest_classes, as the planted benchmark does). The out-of-fold
models are validate's own (kernel + CNN ensemble, 3 folds, retrain, the params defaults besides
cnn_epochs) on the same inputs validate builds (tasks.checks.confident_learning.kernel_features and
32x32 copies). Reported per epochs: accuracy of the out-of-fold probabilities on the true labels, average
precision of the given-label ranking, flagged / flips found (uniform and confusable), seconds.

    python -m bench.suspect_label_epochs [--seeds 100 101] [--epochs 8 15 20 30] [--folds 3 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.data_quality import fashion_base
from bench.planted import nearest_classes

UNIFORM, CONFUSABLE = 1, 2


def flipped_labels(
    true: np.ndarray, fraction: float, rng: np.random.Generator, confusable: dict[int, int], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(given labels, flip kind: 0 none, UNIFORM or CONFUSABLE): `fraction` of `true` flipped, every other
    flip to a uniformly chosen other class, the rest to the confusable class."""
    given, kind = true.copy(), np.zeros(len(true), dtype=int)
    for n_flip, i in enumerate(rng.permutation(len(true))[: int(round(fraction * len(true)))]):
        if n_flip % 2 == 0:
            given[i], kind[i] = int(rng.choice([c for c in range(n_classes) if c != true[i]])), UNIFORM
        else:
            given[i], kind[i] = confusable[int(true[i])], CONFUSABLE
    return given, kind


def flipped_draw(seed: int, n: int, flip_fraction: float, part: str = "train") -> dict[str, np.ndarray]:
    """Kernel features, 32x32 grey CNN inputs, true and given labels and the flip kind (0 none) of a draw
    from Fashion's `part` (train: the tuning part)."""
    from PIL import Image

    from tasks.checks.confident_learning import kernel_features
    from tasks.common.images import to_array

    base = fashion_base(n, seed, part)
    names = sorted({label for _, label in base})
    index = {name: k for k, name in enumerate(names)}
    confusable = {index[name]: index[other] for name, other in nearest_classes(base).items()}
    rng = np.random.default_rng(seed + 7)  # which images flip: a stream apart from the image draw's
    true = np.array([index[label] for _, label in base])
    given, kind = flipped_labels(true, flip_fraction, rng, confusable, len(names))
    images = [Image.fromarray(arr) for arr, _ in base]
    cnn = np.stack([to_array(image, 32, 3) for image in images])[..., :1].copy()  # grey: one channel
    return {"kernel": kernel_features(images, 16), "cnn": cnn, "true": true, "given": given, "kind": kind}


def measure(draw: dict[str, np.ndarray], epochs: int, folds: int = 3) -> dict:
    from sklearn.metrics import average_precision_score

    from tasks.validate import SuspectLabelParams, fit_with_params, out_of_fold_members

    cfg = SuspectLabelParams(cnn_epochs=epochs, folds=folds)  # model: ensemble, the default
    start = time.perf_counter()
    fit = fit_with_params(out_of_fold_members(draw, cfg), draw["given"], cfg)
    seconds = time.perf_counter() - start
    given, kind = draw["given"], draw["kind"]
    flip = kind > 0
    given_probability = fit.probs[np.arange(len(given)), given]
    return {
        "epochs": epochs,
        "folds": folds,
        "accuracy_on_true_labels": round(float((fit.probs.argmax(1) == draw["true"]).mean()), 4),
        "average_precision": round(float(average_precision_score(flip, -given_probability)), 4),
        "planted": int(flip.sum()),
        "flagged": int(fit.issues.sum()),
        "found": int((fit.issues & flip).sum()),
        "found_uniform": int((fit.issues & (kind == UNIFORM)).sum()),
        "found_confusable": int((fit.issues & (kind == CONFUSABLE)).sum()),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 15, 20, 30])
    parser.add_argument("--folds", type=int, nargs="+", default=[3])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--flip-fraction", type=float, default=0.03)
    parser.add_argument("--out", type=Path, default=Path("bench/results/suspect_label_epochs.json"))
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        draw = flipped_draw(seed, args.n, args.flip_fraction)
        for folds in args.folds:
            for epochs in args.epochs:
                rows.append({"seed": seed, **measure(draw, epochs, folds)})
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"n": args.n, "flip_fraction": args.flip_fraction, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
