"""Training in one process against DDP in two (gloo, CPU): the train stage as users run it
(`python -m tasks.train --params ...`; Lightning's launcher starts rank 1), same data, params and epochs,
each process count into its own train_dir and MLflow experiment of one sqlite store.

Figures per process count: training throughput (train images an epoch / seconds per epoch, the
stage's own train/seconds_per_epoch: from the start of training proper, so process start-up and the
process group are left out; each epoch's validation is in), test accuracy of the exported model on the
prepared store's test split, best val/acc, wall seconds of the whole command. Lightning gives each CPU
DDP process cores // processes torch threads, so the two-process run uses the same cores as the
first one-process run; a third run gives one process a single thread (what each rank gets): on a
loaded machine, two threads of one process fighting over busy cores can be slower than one.

    python -m bench.ddp [--n 2000 | --prepared-root DIR] [--epochs 3] [--network resnet_tiny]
    -> bench/results/ddp_cpu.json"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from bench.common import (
    DATA_STAGES,
    project_paths,
    ratio,
    run_stages,
    table,
    write_fashion_folder,
    write_params,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]


def train(root: Path, processes: int, args, threads: int | None = None) -> dict:
    """One `python -m tasks.train` with `processes` CPU processes (torch threads each: `threads`, else
    Lightning's choice); its summary plus the figures above."""
    name = f"{processes}" + (f"-t{threads}" if threads else "")
    paths = project_paths(root / "project").model_copy(update={"train_dir": str(root / f"train-{name}")})
    section = {
        "network": args.network,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_workers": 0,
        "early_stopping_patience": None,
        "accelerator": "cpu",
        "devices": processes,
        "strategy": "ddp" if processes > 1 else "auto",
        "experiment": f"bench-ddp-{name}",
        "seed": args.seed,
    }
    params_file = root / f"params-{name}.yaml"
    params_file.write_text(yaml.safe_dump({"paths": paths.model_dump(), "train": section}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env |= {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tasks.train", "--params", str(params_file)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"train with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.rindex("\n{\n") + 1 :])
    train_dir = Path(paths.train_dir)
    steps = torch.load(train_dir / "last.ckpt", weights_only=True)["global_step"]
    images_per_epoch = steps / summary["epochs"] * args.batch_size * processes  # drop_last: whole batches only
    return {
        "processes": processes,
        "torch_threads_per_process": threads or max(1, (os.cpu_count() or 1) // processes),
        "run_id": summary["run_id"],
        "epochs": summary["epochs"],
        "optimizer_steps": int(steps),
        "train_images_per_epoch": int(images_per_epoch),
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "images_per_second": round(images_per_epoch / summary["seconds_per_epoch"], 1),
        "best_val_acc": round(summary["best_val_acc"], 4),
        "test_acc": round(test_accuracy(Path(paths.prepared), train_dir), 4),
        "wall_seconds": round(wall, 1),
    }


def build_prepared(root: Path, n: int, seed: int) -> None:
    """root/project with a prepared store of n Fashion-MNIST images, made by the real data stages with
    params.yaml defaults except validate's suspect-label search (minutes of CNN training, beside the point)."""
    write_fashion_folder(root / "source", n, seed)
    sections = {"ingest": {"source": str(root / "source")}, "validate": {"suspect_label": {"enabled": False}}}
    run_stages(write_params(root / "project", sections), DATA_STAGES)


def test_accuracy(prepared: Path, train_dir: Path) -> float:
    from models.predictor import load_predictor

    index = pd.read_parquet(prepared / "index.parquet")
    test = index[(index["split"] == "test") & ~index["balance_copy"].astype(bool)]
    images = np.load(prepared / "images.npy", mmap_mode="r")[test["row"].to_numpy()]
    predicted = load_predictor(train_dir).predict_proba(np.asarray(images)).argmax(axis=1)
    return float((predicted == test["label_idx"].to_numpy()).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="Fashion-MNIST images in the prepared store")
    parser.add_argument("--prepared-root", help="a folder a previous run built (reuses its project/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--network", default="resnet_tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/ddp_cpu.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        root = Path(args.prepared_root or tmp).resolve()
        if not (root / "project").is_dir():
            build_prepared(root, args.n, args.seed)
        # one process with every core, one with one core (what each DDP rank gets), then two
        runs = [train(root, 1, args), train(root, 1, args, threads=1), train(root, 2, args)]
    single, single_thread, ddp = runs
    result = {
        "benchmark": "ddp_cpu",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "prepared_root")},
        "runs": runs,
        "throughput_ratio_2_over_1": ratio(ddp["images_per_second"], single["images_per_second"]),
        "throughput_ratio_2_over_1_one_thread": ratio(ddp["images_per_second"], single_thread["images_per_second"]),
        "test_acc_difference_2_minus_1": round(ddp["test_acc"] - single["test_acc"], 4),
        "note": "2 processes take half the optimizer steps an epoch at twice the global batch, same lr",
    }
    write_result(result, args.out)
    print(
        table(
            ["processes", "threads each", "images/s", "s/epoch", "steps", "val acc", "test acc", "wall s"],
            [
                [
                    r["processes"],
                    r["torch_threads_per_process"],
                    r["images_per_second"],
                    r["seconds_per_epoch"],
                    r["optimizer_steps"],
                    r["best_val_acc"],
                    r["test_acc"],
                    r["wall_seconds"],
                ]
                for r in runs
            ],
        )
    )
    print(
        f"throughput 2/1: {result['throughput_ratio_2_over_1']} "
        f"(1 thread: {result['throughput_ratio_2_over_1_one_thread']})  test acc 2-1: {result['test_acc_difference_2_minus_1']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
