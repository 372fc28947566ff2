"""Fixtures every test may use. Builders and stub models live in tests/helpers/ (plain functions)."""

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


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A fresh MLflow sqlite store in tmp_path as the tracking URI, for this process (mlflow's
    globals) and for the subprocesses and stages it starts (MLFLOW_TRACKING_URI); the autouse
    fixtures below put the previous one back afterwards."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def pin_mlflow_state(mp: pytest.MonkeyPatch) -> None:
    """MLflow keeps the tracking/registry URI and the active experiment in module globals and exports
    them to the environment (set_tracking_uri, set_experiment, and so train/evaluate). `mp` records
    each as it is now and puts it back at its teardown, so a later test never talks to an earlier
    test's store."""
    import os

    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        if name in os.environ:
            mp.setenv(name, os.environ[name])
        else:
            mp.delenv(name, raising=False)
    for module, name in (
        (tracking_utils, "_tracking_uri"),
        (registry_utils, "_registry_uri"),
        (fluent, "_active_experiment_id"),
    ):
        mp.setattr(module, name, getattr(module, name))


@pytest.fixture(autouse=True, scope="module")
def no_mlflow_state_leaks_out_of_a_module():
    with pytest.MonkeyPatch.context() as mp:  # module-scoped fixtures set MLflow state too
        pin_mlflow_state(mp)
        yield


@pytest.fixture(autouse=True)
def no_mlflow_state_leaks_out_of_a_test(monkeypatch):
    pin_mlflow_state(monkeypatch)
