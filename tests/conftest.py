from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory, with a writer for its params.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")

    class Project:
        root = tmp_path

        @staticmethod
        def write_params(**sections) -> Path:
            path = tmp_path / "params.yaml"
            path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
            return path

    return Project()


@pytest.fixture(autouse=True)
def no_mlflow_state_between_tests(monkeypatch):
    """MLflow's fluent API keeps the active experiment in a global and in MLFLOW_EXPERIMENT_ID; a test
    must never inherit them from an earlier test that used another tracking store."""
    import mlflow.tracking.fluent as fluent

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
