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
    """MLflow keeps the tracking/registry URI and the active experiment in module globals and exports
    them to the environment (set_tracking_uri, set_experiment); a test must never inherit them from an
    earlier test that used another store. monkeypatch puts every one back after the test."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
