"""The model card: built from the stage reports, attached to a version in a real sqlite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.common.params import Paths
from tasks.judging.model_card import CARD_FILE, MAX_DESCRIPTION, attach_model_card, model_card, reason_counts

DECISION = {
    "model_name": "imgcls",
    "metric": "test/macro_f1",
    "decision": "promoted",
    "reason": "first champion: test/macro_f1 0.9300 >= floor 0.9",
    "decided_at": "2026-01-02T03:04:05+00:00",
    "candidate": {"version": "1"},
    "champion": None,
    "gates": [
        {"name": "floor", "value": 0.93, "threshold": 0.9, "passed": True, "detail": "test/macro_f1 >= floor"},
        {"name": "ece", "value": 0.031, "threshold": None, "passed": True, "detail": "no bound"},
    ],
}


def flagged(reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_path": [f"img{i}.png" for i in range(len(reasons))],
            "image_id": "x",
            "label": "cat",
            "reason": reasons,
            "detail": "",
            "kept_image_id": "",
        }
    )


@pytest.fixture
def paths(tmp_path) -> Paths:
    paths = Paths(reports=str(tmp_path / "reports"), prepared=str(tmp_path / "prepared"))
    evaluate = paths.report_dir("evaluate")
    evaluate.mkdir(parents=True)
    pd.DataFrame(
        {
            "split": ["val", "val", "test", "test"],
            "class": ["cat", "dog", "cat", "dog"],
            "precision": [0.5, 0.5, 0.91, 0.95],
            "recall": [0.5, 0.5, 0.96, 0.9],
            "f1": [0.5, 0.5, 0.9343, 0.9243],
            "support": [10, 10, 25, 20],
        }
    ).to_csv(evaluate / "per_class.csv", index=False)
    (evaluate / "metrics.json").write_text(
        json.dumps(
            {"val/ece": 0.05, "test/ece": 0.0312, "test/acc": 0.93, "test/macro_f1": 0.9293, "baseline/test/ece": 0.2}
        )
    )
    for stage, reasons in (("clean", ["corrupt", "duplicate", "corrupt"]), ("validate", ["suspect_label"] * 4)):
        paths.report_dir(stage).mkdir(parents=True)
        flagged(reasons).to_csv(paths.report_dir(stage) / "flagged.csv", index=False)
    Path(paths.prepared).mkdir()
    (Path(paths.prepared) / "stats.json").write_text(
        json.dumps({"image_size": 64, "channels": 3, "mean": [0.5] * 3, "std": [0.2] * 3})
    )
    (Path(paths.prepared) / "classes.json").write_text(json.dumps(["cat", "dog"]))
    return paths


def test_card_holds_the_per_class_rows_the_counts_and_the_decision(paths):
    card = model_card(paths, model_name="imgcls", version=1, decision=DECISION, dataset_version="ds-abc", run_id="r1")
    assert card.startswith("# Model card: imgcls v1")
    assert "`ds-abc`" in card and "`r1`" in card and "cat, dog" in card
    assert "| cat | 0.9100 | 0.9600 | 0.9343 | 25 |" in card and "| dog | 0.9500 | 0.9000 | 0.9243 | 20 |" in card
    assert "| cat | 0.5000" not in card  # the val rows are not the reported ones
    assert "| test | 0.0312 |" in card and "| val | 0.0500 |" in card and "0.2000" not in card.split("## Data")[0]
    assert "| clean | corrupt | 2 |" in card and "| clean | duplicate | 1 |" in card
    assert "| validate | suspect_label | 4 |" in card and "- clean: 3 images flagged" in card
    assert "64x64 RGB (3 channels)" in card
    assert (
        "first champion" in card
        and "no champion (first model)" in card
        and "| floor | 0.9300 | 0.9000 | True |" in card
    )
    assert "| ece | 0.0310 | — | True | no bound |" in card
    assert reason_counts(paths) == {"clean": {"corrupt": 2, "duplicate": 1}, "validate": {"suspect_label": 4}}


def test_missing_reports_are_named_not_fatal(tmp_path):
    paths = Paths(reports=str(tmp_path / "reports"), prepared=str(tmp_path / "prepared"))
    card = model_card(paths, model_name="m", version="3")
    assert "per_class.csv not found" in card and "metrics.json not found" in card
    assert "no clean/validate reports found" in card and "no promotion decision recorded" in card
    assert "`unknown`" in card


def test_attached_card_is_the_version_description_and_a_run_artifact(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # the default artifact root is ./mlruns
    with mlflow.start_run() as run:
        mlflow.log_text("placeholder", "model/MLmodel")
    client = MlflowClient()
    client.create_registered_model("imgcls")
    version = client.create_model_version("imgcls", f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version

    card = model_card(paths, model_name="imgcls", version=version, decision=DECISION, dataset_version="ds-abc")
    assert attach_model_card(client, "imgcls", version, card) == f"runs:/{run.info.run_id}/{CARD_FILE}"
    assert MlflowClient().get_model_version("imgcls", str(version)).description == card
    logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{CARD_FILE}")
    assert logged == card

    long_card = card + "x" * MAX_DESCRIPTION
    attach_model_card(client, "imgcls", version, long_card)
    description = MlflowClient().get_model_version("imgcls", str(version)).description
    assert len(description) < len(long_card) and description.endswith(f"{CARD_FILE})_\n")
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{CARD_FILE}") == long_card
