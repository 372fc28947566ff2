import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tasks.common.errors import UserError
from tasks.common.params import Paths
from tasks.common.prepared import read_prepared
from tasks.evaluate import Params, log_to_training_run, run, write_reports
from tasks.judging.metrics import classification_metrics, per_class_table
from tests.helpers.prepared_store import STRIPE_CLASSES as CLASSES
from tests.helpers.prepared_store import make_prepared_store, make_project

REPORTS = [
    "metrics.json",
    "per_class.csv",
    "predictions.csv",
    "confusion.png",
    "confusion_normalized.png",
    "reliability.png",
    "mistakes.png",
]


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _paths(tmp_path):
    return Paths(
        prepared=str(tmp_path / "prepared"), train_dir=str(tmp_path / "train"), reports=str(tmp_path / "reports")
    )


def test_missing_inputs_are_user_errors(tmp_path):
    paths = _paths(tmp_path)
    with pytest.raises(UserError, match="run the `augment` stage first"):
        run(Params(), paths)
    make_prepared_store(tmp_path / "prepared")
    with pytest.raises(UserError, match="run the `train` stage first"):
        run(Params(), paths)


def test_balance_copies_are_not_evaluated(tmp_path):
    store = read_prepared(make_prepared_store(tmp_path / "prepared"))
    assert not store.index["balance_copy"].any()
    assert len(store.split("train")) == 12 * len(CLASSES)


def test_write_reports(tmp_path):
    store = read_prepared(make_prepared_store(tmp_path / "prepared"))
    frame = store.split("test")
    y_true = frame["label_idx"].to_numpy()
    proba = np.full((len(frame), 3), 0.1)
    proba[np.arange(len(frame)), y_true] = 0.8
    proba[0] = np.roll(proba[0], 1)  # one confident mistake
    metrics = {f"test/{k}": v for k, v in classification_metrics(y_true, proba, 3, 15).items()}
    per_class = per_class_table(y_true, proba.argmax(1), CLASSES).assign(split="test")
    out = tmp_path / "reports"
    write_reports(out, store, frame, y_true, proba, metrics, per_class, Params())
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORTS)
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == pytest.approx(metrics["test/acc"])
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions.columns.tolist() == ["actual", "predicted"]
    assert predictions["actual"].tolist() == [CLASSES[i] for i in y_true]
    assert (predictions["actual"] != predictions["predicted"]).sum() == 1
    assert pd.read_csv(out / "per_class.csv").columns.tolist() == [
        "split",
        "class",
        "precision",
        "recall",
        "f1",
        "support",
    ]


def test_metrics_and_reports_land_in_the_training_run(tmp_path, tracking):
    with mlflow.start_run() as train_run:
        for epoch in range(3):
            mlflow.log_metric("val/acc", 0.5 + epoch / 10, step=epoch)
    out = tmp_path / "reports" / "evaluate"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    run_json = {"run_id": train_run.info.run_id, "tracking_uri": tracking}
    log_to_training_run(run_json, {"val/acc": 0.75, "test/acc": 0.7}, out, "baseline123")

    client = MlflowClient(tracking)
    logged = client.get_run(train_run.info.run_id)
    assert logged.data.metrics == {"val/acc": 0.75, "test/acc": 0.7}  # evaluate's values are the latest
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "val/acc")] == [0, 1, 2, 3]
    assert logged.data.tags["baseline_run_id"] == "baseline123"
    assert [a.path for a in client.list_artifacts(train_run.info.run_id, "evaluate")] == ["evaluate/metrics.json"]


def test_evaluate_stage_on_a_trained_model(tmp_path, tracking):
    from tasks.train import Params as TrainParams
    from tasks.train import run as train

    paths = make_project(tmp_path)  # prepared store + split manifest, classes told apart by brightness
    train(TrainParams(epochs=1, batch_size=16, num_workers=0), paths)

    result = run(Params(), paths)

    out = tmp_path / "reports" / "evaluate"
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORTS)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("acc", "balanced_acc", "macro_f1", "weighted_f1", "top3_acc", "log_loss", "ece"):
            assert np.isfinite(metrics[f"{split}/{key}"])
    assert metrics["test/top3_acc"] == 1.0  # three classes
    # HOG sees gradients, not brightness: on these classes the baseline is near chance, the CNN is not
    assert 0 <= metrics["baseline/test/acc"] <= 1
    run_json = json.loads((tmp_path / "train" / "run.json").read_text())
    client = MlflowClient(tracking)
    baseline_run = client.get_run(result["baseline_run_id"])
    assert baseline_run.data.metrics["test/acc"] == pytest.approx(metrics["baseline/test/acc"])
    train_run = client.get_run(run_json["run_id"])
    assert train_run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert train_run.data.tags["baseline_run_id"] == result["baseline_run_id"]
    assert client.get_run(result["baseline_run_id"]).data.tags["stage"] == "baseline"
    assert "evaluate/mistakes.png" in [a.path for a in client.list_artifacts(run_json["run_id"], "evaluate")]
