"""Fashion-MNIST through the real train and evaluate stages with a wall-clock training budget, for a lent
GPU whose device time is too short for the data half (measured on CPU in bench/accuracy.py).

The prepared store is written straight from the idx files in the layout `augment` writes: the official
60k training images split train/val 90/10 (fixed seed), the official 10k test images as test, 28x28 grey,
bench/accuracy.py's Fashion augmentations (flip + small affine) and test-time flip. Then the train stage
(its own Params, `max_time_minutes` = the budget) and the evaluate stage (no HOG baseline) run on it.

    python -m bench.gpu_fashion --root /tmp/gf --budget-seconds 60 --set train.batch_size=256 --out R.json"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench import fashion
from bench.accuracy import parse_overrides
from bench.common import machine, write_array_store, write_result
from tasks import evaluate, train
from tasks.common.params import Paths, deep_merge

TRANSFORMS = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "translate_percent": [-0.06, 0.06], "scale": [0.95, 1.05], "p": 0.5},
]


def write_store(root: Path, val_fraction: float = 0.1, seed: int = 0) -> Paths:
    """The prepared store + split manifest for the whole Fashion-MNIST set; returns the project's Paths."""
    train_images, train_labels = fashion.load("train")
    test_images, test_labels = fashion.load("test")
    order = np.random.default_rng(seed).permutation(len(train_labels))
    val_rows = set(order[: int(len(order) * val_fraction)].tolist())
    splits = ["val" if i in val_rows else "train" for i in range(len(train_labels))] + ["test"] * len(test_labels)
    return write_array_store(
        root,
        np.concatenate([train_images, test_images]),
        np.concatenate([train_labels, test_labels]),
        splits,
        fashion.CLASSES,
        TRANSFORMS,
        test_time_flip=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_fashion", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("/tmp/gpu_fashion"))
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE (YAML value)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    paths = write_store(args.root)
    store_seconds = time.perf_counter() - started
    overrides = parse_overrides(args.set).get("train", {})
    train_params = train.Params(**deep_merge({"max_time_minutes": args.budget_seconds / 60}, overrides))
    trained = train.run(train_params, paths)
    eval_params = evaluate.Params(baseline={"enabled": False})
    metrics = evaluate.run(eval_params, paths)
    result = {
        "machine": machine(),
        "train_params": train_params.model_dump(),
        "store_seconds": round(store_seconds, 1),
        "train": {k: v for k, v in trained.items() if isinstance(v, (int, float, str, type(None)))},
        "evaluate": metrics,
    }
    write_result(result, args.out)
    print(json.dumps({"train": result["train"], "evaluate": metrics}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
