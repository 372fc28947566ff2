"""One CNN vs an ensemble of N seeds on the bundled digits (params.yaml defaults, the default split):
the pipeline up to augment, then `imgcls ensemble --seeds N [--baseline]`'s code
(tasks/judging/ensemble.py: train with train.seed = 0..N-1, weights chosen on val; with --baseline the
HOG baseline is the last member), then the evaluate stage on the ensemble. Test accuracy of every
member (member 0 is exactly the single model the default pipeline trains: seed 0), of the equal-weight
and the chosen-weight ensemble, and p50 single-image latency, on this machine's CPU.

--groups G (with --baseline) splits the N seeds into disjoint groups of G (seeds 0..G-1, G..2G-1, ...)
and scores each group as its own ensemble, with and without the HOG member, weights chosen on val the
way `imgcls ensemble` chooses them: how much the HOG member's gain depends on which seeds were drawn.

    python -m bench.ensemble [--seeds 3] [--baseline] [--groups 4] [--set train.epochs=10]
                             [--out bench/results/ensemble_digits.json]"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.accuracy import add_overrides_argument, parse_overrides, write_params
from bench.common import run_stages, write_result
from tasks.common.params import Paths

PREPARE = ["ingest", "clean", "validate", "split", "augment"]


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return round(float((proba.argmax(1) == y).mean()), 4)


def group_scores(val_proba, y_val, test_proba, y_test, group: int) -> list[dict]:
    """Each disjoint group of `group` CNN members (the HOG member is the last one) as an ensemble of its
    own, CNNs only and with the HOG member; weights chosen on val (choose_weights, auto)."""
    from tasks.judging.ensemble import choose_weights

    cnns = len(val_proba) - 1
    out = []
    for start in range(0, cnns - group + 1, group):
        row = {"seeds": list(range(start, start + group))}
        for name, members in (
            ("cnn_only", list(range(start, start + group))),
            ("with_hog", [*range(start, start + group), cnns]),
        ):
            weights, chosen = choose_weights(val_proba[members], y_val)
            pooled = np.tensordot(weights, test_proba[members], axes=1)
            row[f"{name}_test_acc"] = accuracy(pooled, y_test)
            row[f"{name}_test_wrong"] = int((pooled.argmax(1) != y_test).sum())
            row[f"{name}_weights"] = chosen
        out.append(row)
    return out


def measure(root: Path, seeds: int, overrides: dict, baseline: bool = False, group: int | None = None) -> dict:
    import json

    from models.predictor import load_predictor
    from tasks.common.prepared import read_prepared
    from tasks.evaluate import Params as EvalParams
    from tasks.evaluate import run as evaluate
    from tasks.judging.ensemble import build
    from tasks.train import Params as TrainParams

    params_file = write_params(root, overrides)
    data = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    paths = Paths(**data["paths"])
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"  # never the project's own store
    os.chdir(root)
    seconds = run_stages(params_file, PREPARE)
    started = time.perf_counter()
    eval_params = EvalParams(**(data.get("evaluate") or {}))
    made = build(
        TrainParams(**(data.get("train") or {})),
        paths,
        seeds=seeds,
        baseline=eval_params.baseline if baseline else None,
    )
    seconds["ensemble (train members + fit)"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    evaluate(eval_params, paths)
    seconds["evaluate"] = round(time.perf_counter() - started, 1)
    metrics = json.loads((paths.report_dir("evaluate") / "metrics.json").read_text(encoding="utf-8"))

    ensemble = load_predictor(paths.train_dir)
    store = read_prepared(paths.prepared)
    test = store.split("test")
    y = test["label_idx"].to_numpy()
    proba = ensemble.member_proba(np.asarray(store.images[test["row"].to_numpy()]))
    members = [accuracy(p, y) for p in proba]
    cnn = proba[:seeds]
    extra = {}
    if baseline:
        val = store.split("val")
        val_proba = ensemble.member_proba(np.asarray(store.images[val["row"].to_numpy()]))
        extra = {
            "hog_member_test_acc": members[-1],
            "cnn_only_equal_weights_test_acc": accuracy(cnn.mean(0), y),
            "groups": group_scores(val_proba, val["label_idx"].to_numpy(), proba, y, group) if group else [],
        }
    return extra | {
        "dataset": "digits",
        "seeds": seeds,
        "test_images": int(len(y)),
        "network": TrainParams(**(data.get("train") or {})).network,
        "single_model_test_acc": members[0],
        "member_test_acc": members,
        "member_test_acc_mean": round(float(np.mean(members[:seeds])), 4),  # the CNNs
        "ensemble_equal_weights_test_acc": accuracy(proba.mean(0), y),
        "ensemble_test_acc": metrics["test/acc"],
        "ensemble_test_macro_f1": metrics["test/macro_f1"],
        "ensemble_test_log_loss": metrics.get("test/log_loss"),
        "ensemble_weights": made["weights"],
        "val": {k: round(v, 4) for k, v in made["metrics"].items() if k.startswith("val/")},
        "baseline_test_acc": metrics.get("baseline/test/acc"),
        "latency_p50_ms": {
            "ensemble": round(metrics["ensemble/latency_p50_ms"], 2),
            "one_member": round(metrics["ensemble/member_latency_p50_ms"], 2),
        },
        "goal_test_acc": 0.99,
        "goal_met": metrics["test/acc"] >= 0.99,
        "overrides": overrides,
        "seconds": seconds,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "this CPU",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="the HOG baseline as one more member")
    parser.add_argument("--groups", type=int, default=None, metavar="G", help="score disjoint groups of G seeds")
    add_overrides_argument(parser)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ensemble_digits.json"))
    args = parser.parse_args(argv)
    if args.groups is not None and not (args.baseline and 1 <= args.groups <= args.seeds):
        parser.error("--groups G needs --baseline and 1 <= G <= --seeds")
    out = args.out.resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ensemble_") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        try:
            result = measure(root, args.seeds, parse_overrides(args.overrides), args.baseline, args.groups)
        finally:
            os.chdir(here)
    write_result(result, out)
    print(
        f"digits test accuracy ({result['test_images']} images): one model {result['single_model_test_acc']:.4f}, "
        f"members {result['member_test_acc']}, ensemble of {args.seeds} {result['ensemble_test_acc']:.4f} "
        f"(equal weights {result['ensemble_equal_weights_test_acc']:.4f}); p50 latency "
        f"{result['latency_p50_ms']['ensemble']} ms vs {result['latency_p50_ms']['one_member']} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
