"""validate's out-of-fold models: fitted one after another in the stage's process vs one (fold, model)
per task on a LocalCluster of single-threaded workers on the same machine (tasks/checks/oof_folds.py).

    python -m bench.fold_tasks [--images 10000] [--workers 2] [--out bench/results/fold_tasks.json]

Real Fashion-MNIST (the first --images of the training part), 5 folds, first round, each member
alone: the CNN (1 epoch per fold, as validate's budget gives at 70k) and the kernel model. Also one
CNN fold alone with torch on 1 and on 2 threads. The ratio process / cluster above 1 would mean the
fold tasks pay off on this machine; validate sends folds to the engine only on a running cluster
(engine.address) because on 2 cores it was below 1."""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from bench import fashion
from bench.common import ratio, table, write_result
from tasks.checks.confident_learning import kernel_features, kernel_model, out_of_fold_probabilities
from tasks.checks.oof_folds import ClusterFolds, fit_member
from tasks.common import engine
from tasks.common.images import to_array

FOLDS = 5


def members(images: np.ndarray) -> dict:
    from tasks.checks.oof_cnn import cnn_model

    pictures = [Image.fromarray(a) for a in images]
    return {
        "cnn": cnn_model(np.stack([to_array(p, 32, 3) for p in pictures]), epochs=1, budget=1, seed=0),
        "kernel": kernel_model(kernel_features(pictures, 16), 0),
    }


def one_fold_by_threads(cnn, labels: np.ndarray) -> dict:
    import torch

    train, test = np.arange(int(len(labels) * 0.8)), np.arange(int(len(labels) * 0.8), len(labels))
    before, out = torch.get_num_threads(), {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            t = time.perf_counter()
            fit_member(cnn, labels, train, test, 10)
            out[f"{threads}_threads_s"] = round(time.perf_counter() - t, 1)
    finally:
        torch.set_num_threads(before)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold_tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/results/fold_tasks.json")
    args = parser.parse_args(argv)
    import distributed

    images, labels = fashion.load("train")
    images, labels = images[: args.images], labels[: args.images].astype(np.int64)
    built = members(images)
    result: dict = {"images": args.images, "folds": FOLDS, "workers": args.workers, "members": {}}
    result["cnn_one_fold"] = one_fold_by_threads(built["cnn"], labels)
    here = {}
    for name, member in built.items():
        t = time.perf_counter()
        here[name] = out_of_fold_probabilities([member], labels, FOLDS, 0)
        result["members"][name] = {"process_s": round(time.perf_counter() - t, 1)}
    with (
        distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        engine.session(len(labels), engine.EngineParams(address=cluster.scheduler_address, in_process_below=0)) as eng,
    ):
        eng.client.run(lambda: __import__("torch"))  # imports are not the fits' cost
        for name, member in built.items():
            t = time.perf_counter()
            there = out_of_fold_probabilities([member], labels, FOLDS, 0, fit_folds=ClusterFolds(eng))
            row = result["members"][name]
            row["cluster_s"] = round(time.perf_counter() - t, 1)
            row["process_over_cluster"] = ratio(row["process_s"], row["cluster_s"])
            row["same_argmax"] = float((here[name].argmax(1) == there.argmax(1)).mean())
    rows = [[n, r["process_s"], r["cluster_s"], r["process_over_cluster"]] for n, r in result["members"].items()]
    print(table(["member", "process s", f"{args.workers} workers s", "process / cluster"], rows))
    print("one CNN fold:", result["cnn_one_fold"])
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
