"""evaluate: score the trained model on the held-out splits of the prepared store, compare it with a
classical baseline, write reports/evaluate/ (metrics.json, per_class.csv, predictions.csv and pictures)
and log all of it to the training run in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from tasks.common import run_records, tracking
from tasks.common.atomic import atomic_dir, write_csv, write_json
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.params import Paths, Strict
from tasks.common.prepared import PreparedStore, read_prepared
from tasks.judging.baseline import BaselineParams, run_baseline
from tasks.judging.metrics import classification_metrics, confusion, per_class_table, reliability_table
from tasks.judging.plots import confusion_plot, mistakes_gallery, reliability_plot

log = logging.getLogger(__name__)
# Images are scored a batch at a time so a large memory-mapped store is never read into memory whole.
_BATCH = 512


class Params(Strict):
    top_k: int = Field(3, ge=1)
    calibration_bins: int = Field(15, ge=1)
    gallery_size: int = Field(24, ge=0)
    # the last split listed is the one pictured and written to predictions.csv
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["val", "test"], min_length=1)
    baseline: BaselineParams = Field(default_factory=BaselineParams)


def run(params: Params, paths: Paths) -> dict:
    store = read_prepared(paths.prepared)
    train_run = run_records.read_run(paths.train_dir)
    predictor = _load_predictor(Path(paths.train_dir))
    if list(predictor.classes) != store.classes:
        raise UserError(
            f"the model in {paths.train_dir} knows classes {list(predictor.classes)} but {paths.prepared} has "
            f"{store.classes}: run the `train` stage again"
        )

    metrics: dict[str, float] = {}
    per_class: list[pd.DataFrame] = []
    scored: dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]] = {}
    for split in params.splits:
        frame = store.split(split)
        if frame.empty:
            log.warning("the %s split has no images; it is left out of the metrics", split)
            continue
        y_true = frame["label_idx"].to_numpy()
        proba = predict_proba(predictor, store.images, frame["row"].to_numpy(), len(store.classes))
        scored[split] = frame, y_true, proba
        metrics |= {
            f"{split}/{k}": v
            for k, v in classification_metrics(y_true, proba, params.top_k, params.calibration_bins).items()
        }
        per_class.append(per_class_table(y_true, proba.argmax(1), store.classes).assign(split=split))
    pictured = params.splits[-1]
    if pictured not in scored:
        raise UserError(f"the {pictured} split of {paths.prepared} has no images to evaluate")
    if hasattr(predictor, "members"):  # an ensemble (imgcls ensemble): what it costs per image vs one member
        from tasks.judging.latency import latency_metrics

        metrics |= latency_metrics(predictor, np.asarray(store.images[int(scored[pictured][0]["row"].iloc[0])]))

    baseline_run_id = None
    if params.baseline.enabled:
        _use_tracking_uri(train_run)
        result = run_baseline(
            params.baseline,
            store,
            splits=params.splits,
            dataset_version=str(train_run.get("dataset_version", "")),
            top_k=params.top_k,
            bins=params.calibration_bins,
            experiment_id=train_run.get("experiment_id"),
        )
        baseline_run_id = result["run_id"]
        metrics |= {f"baseline/{k}": v for k, v in result["metrics"].items()}

    out_dir = paths.report_dir("evaluate")
    with atomic_dir(out_dir) as tmp:
        write_reports(tmp, store, *scored[pictured], metrics, pd.concat(per_class), params)
    log_to_training_run(train_run, metrics, out_dir, baseline_run_id)
    return {
        "metrics": metrics,
        "images": {split: len(frame) for split, (frame, _, _) in scored.items()},
        "pictured_split": pictured,
        "run_id": train_run["run_id"],
        "baseline_run_id": baseline_run_id,
        "report_dir": str(out_dir),
    }


def _load_predictor(train_dir: Path):
    from models.predictor import load_predictor  # torch is imported only when a model is scored

    return load_predictor(train_dir)


def predict_proba(predictor, images: np.ndarray, rows: np.ndarray, n_classes: int) -> np.ndarray:
    parts = [
        np.asarray(predictor.predict_proba(np.asarray(images[rows[i : i + _BATCH]])), dtype=np.float64)
        for i in tqdm(range(0, len(rows), _BATCH), desc="scoring", unit="batch", disable=None)
    ]
    proba = np.concatenate(parts)
    proba /= proba.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 only within ~1e-7; log-loss checks
    if proba.shape != (len(rows), n_classes):
        raise UserError(f"the model returned probabilities of shape {proba.shape}, expected {(len(rows), n_classes)}")
    return proba


def write_reports(
    out_dir: Path,
    store: PreparedStore,
    frame: pd.DataFrame,
    y_true: np.ndarray,
    proba: np.ndarray,
    metrics: dict[str, float],
    per_class: pd.DataFrame,
    params: Params,
) -> None:
    classes = store.classes
    split = frame["split"].iloc[0]
    y_pred = proba.argmax(1)
    write_json(metrics, out_dir / "metrics.json")
    write_csv(per_class[["split", "class", "precision", "recall", "f1", "support"]], out_dir / "per_class.csv")
    names = np.asarray(classes, dtype=object)
    write_csv(pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]}), out_dir / "predictions.csv")
    counts, normalized = confusion(y_true, y_pred, len(classes))
    confusion_plot(counts, classes, out_dir / "confusion.png", f"{split}: confusion matrix (images)")
    confusion_plot(
        normalized, classes, out_dir / "confusion_normalized.png", f"{split}: confusion matrix (share of true class)"
    )
    reliability_plot(
        reliability_table(y_true, proba, params.calibration_bins),
        metrics[f"{split}/ece"],
        out_dir / "reliability.png",
        f"{split}: reliability",
    )
    images = store.images[frame["row"].to_numpy()]
    mistakes_gallery(images, y_true, proba, classes, out_dir / "mistakes.png", params.gallery_size)


def _use_tracking_uri(train_run: dict) -> None:
    """The training run lives where train logged it (run.json); without that, the project's default."""
    tracking.use(train_run.get("tracking_uri"))


def log_to_training_run(train_run: dict, metrics: dict[str, float], out_dir: Path, baseline_run_id: str | None) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    _use_tracking_uri(train_run)
    run_id = train_run["run_id"]
    client = MlflowClient()
    # train already logged e.g. val/acc per epoch; evaluate's value comes after them, so it reads as the final one
    existing = set(client.get_run(run_id).data.metrics) & set(metrics)
    step = max((m.step + 1 for key in existing for m in client.get_metric_history(run_id, key)), default=0)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics, step=step)
        if baseline_run_id:
            mlflow.set_tag("baseline_run_id", baseline_run_id)
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluate")


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
