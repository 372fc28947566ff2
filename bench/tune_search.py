"""Does a time-boxed `imgcls tune` beat params.yaml's train defaults? (issue 14: "a 30-minute search on a
Fashion-MNIST subset beats the defaults by a measured margin").

1. A prepared store from real Fashion-MNIST: `--train-images` + `--val-images` drawn (seed 0) from the
   official training part, and `--test-images` of the official test part as the test split (never seen
   by the search, which maximises val/acc).
2. The study: flows.tune.tune() — the code behind `imgcls tune` — with params.yaml's `tune:` section
   (its search space, pruner and epochs_per_trial) and `timeout_minutes: --minutes`. Its trials are child
   runs of one MLflow parent run in a sqlite store inside the work folder; the parent/child structure is
   checked and reported.
3. Two arms trained for real by the train stage with the same epochs and seeds: `defaults` (params.yaml's
   train section) and `tuned` (the same, with reports/tune/best_params.yaml laid over it, exactly what
   `imgcls run --params-override` applies). Each is scored on the test split by evaluate's own
   predict_proba.

    python -m bench.tune_search                   # 30-minute study, 2 seeds per arm (~70 min on 2 cores)
    python -m bench.tune_search --quick           # tiny sizes, end-to-end check (~2 min)
    python -m bench.tune_search --set tune.pruner=hyperband --set tune.epochs_per_trial=15
                                                  # trials as long as the arms' training, Hyperband prunes

Writes bench/results/tune_search.json (--out) and prints a Markdown table."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from bench import fashion
from bench.accuracy import add_overrides_argument, parse_overrides
from bench.common import table, write_array_store, write_result
from bench.transfer import FASHION_TRANSFORMS, summarise, summary_cells, train_and_score, with_dirs

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("defaults", "tuned")


def fashion_store(root: Path, args):
    """Paths of a prepared store: train/val drawn from Fashion's training part, test from its test part."""
    train_images, train_labels = fashion.load("train")
    test_images, test_labels = fashion.load("test")
    drawn = np.random.default_rng(0).permutation(len(train_labels))[: args.train_images + args.val_images]
    test_rows = np.random.default_rng(0).permutation(len(test_labels))[: args.test_images]
    splits = ["train"] * args.train_images + ["val"] * args.val_images + ["test"] * len(test_rows)
    return write_array_store(
        root,
        np.concatenate([train_images[drawn], test_images[test_rows]]),
        np.concatenate([train_labels[drawn], test_labels[test_rows]]),
        splits,
        fashion.CLASSES,
        FASHION_TRANSFORMS,
        test_time_flip=False,
    )


def project_params(root: Path, paths, train: dict, tune: dict) -> Path:
    """A params file for `imgcls tune`: the repository's params.yaml with this store's paths and the
    bench's train / tune overrides (the search space and pruner stay params.yaml's)."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    data["paths"] = paths.model_dump()
    data["train"] = {**data["train"], **train}
    data["tune"] = {**data["tune"], **tune}
    target = root / "params.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return target


def trial_runs(experiment: str) -> dict:
    """How the study looks in MLflow: parent runs of kind tune, and trials whose parent is that run."""
    import mlflow

    from tasks.tuning.objective import KIND_TAG, PARENT_TAG, STATE_TAG

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    parents = [r.info.run_id for r in runs if r.data.tags.get(KIND_TAG) == "tune"]
    trials = [r for r in runs if r.data.tags.get(KIND_TAG) == "tune_trial"]
    states: dict[str, int] = {}
    for run in trials:
        state = run.data.tags.get(STATE_TAG, "?")
        states[state] = states.get(state, 0) + 1
    return {
        "parent_runs": len(parents),
        "trial_runs": len(trials),
        "trial_runs_under_the_parent": sum(r.data.tags.get(PARENT_TAG) in parents for r in trials),
        "trial_states": states,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_search", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: an end-to-end check, not a result")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--minutes", type=float, default=30.0, help="the study's wall-clock budget")
    parser.add_argument("--epochs", type=int, default=15, help="each arm's train.epochs (params.yaml: 15)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each arm")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a new temporary one)")
    add_overrides_argument(parser, "tune.* (the study) or train.* (both arms and every trial) over params.yaml")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tune_search.json"))
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    if set(overrides) - {"tune", "train"}:
        raise SystemExit("--set takes tune.KEY=VALUE or train.KEY=VALUE")
    tune_overrides = {"timeout_minutes": args.minutes, "n_trials": 10_000, "study_name": "fashion-subset"}
    tune_overrides |= overrides.get("tune", {})
    if args.quick:
        args.train_images, args.val_images, args.test_images, args.epochs, args.seeds = 300, 100, 300, 1, 1
        tune_overrides |= {"timeout_minutes": None, "n_trials": 2, "epochs_per_trial": 1}
        if args.out == parser.get_default("out"):
            args.out = Path(tempfile.gettempdir()) / "tune_search_quick.json"

    from flows.tune import tune
    from tasks.common.params import load_stage, merge_override

    out = args.out.resolve()
    root = (args.root or Path(tempfile.mkdtemp(prefix="tune-search-"))).resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"--root {root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    here = Path.cwd()  # back here before writing the result: its machine block reads the git commit
    os.chdir(root)  # the study's optuna.db sits beside mlflow.db; experiments' artifacts under root/mlruns
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("flows.tune").setLevel(logging.INFO)
    logging.getLogger("tasks.tuning.objective").setLevel(logging.INFO)
    warnings.filterwarnings("ignore")

    # every arm and trial: CPU, no loader workers (2 shared cores), checkpoints rarely
    fixed = {"accelerator": "cpu", "num_workers": 0, "checkpoint_every_n_steps": 10_000}
    paths = fashion_store(root / "store", args)
    params_file = project_params(
        root, paths, {**fixed, "epochs": args.epochs, **overrides.get("train", {})}, tune_overrides
    )

    started = time.perf_counter()
    summary = tune(params_file)
    search_seconds = time.perf_counter() - started
    print(
        f"study: {summary['trials']} trials {summary['by_state']} in {search_seconds:.0f} s; "
        f"best val/acc {summary.get('best_value')}: {summary.get('best_params')}",
        flush=True,
    )
    if "best_params_file" not in summary:
        raise SystemExit("no trial completed within the budget: nothing to compare")

    defaults, _ = load_stage("train", params_file)
    tuned_file = merge_override(params_file, Path(summary["best_params_file"]), root)
    tuned, _ = load_stage("train", tuned_file)
    runs: dict[str, list] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm, params in zip(ARMS, (defaults, tuned), strict=True):
            result = train_and_score(
                params.model_copy(update={"seed": seed}), with_dirs(paths, root / arm / f"s{seed}")
            )
            runs[arm].append(result | {"seed": seed})
            print(f"{arm} seed {seed}: {result}", flush=True)
    arms = {arm: {"summary": summarise(r), "runs": r} for arm, r in runs.items()}
    margin = arms["tuned"]["summary"]["test_acc_mean"] - arms["defaults"]["summary"]["test_acc_mean"]
    result = {
        "quick": args.quick,
        "data": {
            "train_images": args.train_images,
            "val_images": args.val_images,
            "test_images": args.test_images,
            "drawn_from": "Fashion-MNIST training part (train/val, seed 0); official test part (test)",
        },
        "study": summary | {"search_seconds": round(search_seconds, 1), "mlflow": trial_runs("imgcls-tune")},
        "arm_settings": {"epochs": args.epochs, "seeds": args.seeds, **fixed},
        "overrides": overrides,
        "defaults_train": defaults.model_dump(),
        "tuned_train": tuned.model_dump(),
        "arms": arms,
        "test_acc_margin_tuned_minus_defaults": round(margin, 4),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    os.chdir(here)
    write_result(result, out)
    rows = [[arm, *summary_cells(data["summary"], digits=4)] for arm, data in arms.items()]
    print(table(["arm", "seeds", "test acc (mean)", "min-max", "train s (mean)"], rows))
    print(f"margin {margin:+.4f}; wrote {out}; total {result['total_seconds']} s; work folder {root}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
