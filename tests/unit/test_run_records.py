"""run.json / resume.json have one owner (tasks.common.run_records), and the MLflow tracking URI one
decision (tasks.common.tracking)."""

from __future__ import annotations

import json

import pytest

from tasks.common import run_records, tracking
from tasks.common.errors import UserError
from tasks.judging import registry


def test_run_record_round_trips_and_names_the_model(tmp_path):
    written = run_records.write_run(
        tmp_path, run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db", dataset_version="d" * 64
    )
    assert written["model_uri"] == "runs:/abc/model" and written["baseline_run_id"] is None
    assert run_records.read_run(tmp_path) == written
    assert json.loads((tmp_path / "run.json").read_text()) == written
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "run.json not found: run the `train` stage first"),
        ("{not json", "run.json: not readable as JSON"),
        ("[1, 2]", "run.json: expected a JSON object, got list"),
        ('{"run_id": "abc"}', "run.json: missing model_uri: run the `train` stage again"),
        ('{"model_uri": "runs:/x/model", "run_id": ""}', "run.json: missing run_id"),
    ],
)
def test_a_missing_or_broken_run_record_is_one_clear_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        run_records.read_run(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "run.json") in str(err.value)


def test_missing_ok_is_only_about_a_missing_file(tmp_path):
    assert run_records.read_run(tmp_path, missing_ok=True) is None
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(UserError, match="not readable"):
        run_records.read_run(tmp_path, missing_ok=True)


def test_resume_state_round_trips_and_unreadable_state_means_start_afresh(tmp_path):
    assert run_records.read_resume(tmp_path) == {}
    run_records.write_resume(tmp_path, run_id="r", experiment_id="1", fingerprint="f", completed=False)
    assert run_records.read_resume(tmp_path) == {
        "run_id": "r",
        "experiment_id": "1",
        "fingerprint": "f",
        "completed": False,
    }
    for junk in ("{half", "[]", "\xff"):
        (tmp_path / "resume.json").write_text(junk, encoding="latin-1")
        assert run_records.read_resume(tmp_path) == {}


def test_tracking_uri_is_the_environment_else_sqlite_in_the_working_directory(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"
    assert registry.tracking_uri() == tracking.tracking_uri()  # the registry asks the same place
