"""One CNN vs an ensemble of N seeds on the bundled digits (params.yaml defaults, the default split):
the pipeline up to augment, then `imgcls ensemble --seeds N`'s code (tasks/judging/ensemble.py: train
with train.seed = 0..N-1, weights fitted on val), then the evaluate stage on the ensemble. Test accuracy
of every member (member 0 is exactly the single model the default pipeline trains: seed 0), of the
equal-weight and the fitted ensemble, and p50 single-image latency, on this machine's CPU.

    python -m bench.ensemble [--seeds 3] [--set train.epochs=10] [--out bench/results/ensemble_digits.json]"""

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


def measure(root: Path, seeds: int, overrides: dict) -> dict:
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
    made = build(TrainParams(**(data.get("train") or {})), paths, seeds=seeds)
    seconds["ensemble (train members + fit)"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    evaluate(EvalParams(**(data.get("evaluate") or {})), paths)
    seconds["evaluate"] = round(time.perf_counter() - started, 1)
    metrics = json.loads((paths.report_dir("evaluate") / "metrics.json").read_text(encoding="utf-8"))

    ensemble = load_predictor(paths.train_dir)
    store = read_prepared(paths.prepared)
    test = store.split("test")
    y = test["label_idx"].to_numpy()
    proba = ensemble.member_proba(np.asarray(store.images[test["row"].to_numpy()]))
    members = [accuracy(p, y) for p in proba]
    return {
        "dataset": "digits",
        "seeds": seeds,
        "test_images": int(len(y)),
        "network": TrainParams(**(data.get("train") or {})).network,
        "single_model_test_acc": members[0],
        "member_test_acc": members,
        "member_test_acc_mean": round(float(np.mean(members)), 4),
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
    add_overrides_argument(parser)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ensemble_digits.json"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ensemble_") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        try:
            result = measure(root, args.seeds, parse_overrides(args.overrides))
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
