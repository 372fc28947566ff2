"""A quiet first run (issue 13): the CLI's process-wide defaults, the experiment MLflow's UI opens on
its runs, artifacts inside the project, the one-line stage summary and validate's progress lines.
The whole `imgcls run` with its captured output: tests/integration/test_flow.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flows import cli
from tasks.checks.confident_learning import Progress
from tasks.common import tracking as store
from tasks.common.entry import summary_line

PREFECT_VARS = ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No Prefect/telemetry settings of the user, a HOME without a Prefect profile; every variable
    quiet_defaults may set is put back afterwards (monkeypatch records them)."""
    for name in (*PREFECT_VARS, *cli.QUIET_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quiet_defaults_turn_telemetry_off_and_keep_prefect_in_the_project(clean_env, monkeypatch):
    set_now = cli.quiet_defaults()
    assert set_now["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and set_now["DO_NOT_TRACK"] == "true"
    assert set_now["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert Path(set_now["PREFECT_HOME"]) == clean_env.resolve() / ".imgcls" / "prefect"
    assert Path(set_now["PREFECT_HOME"]).is_dir()  # made here: Prefect would not make its parents
    # Prefect itself reads them: server analytics off, the SDK's telemetry check off
    from prefect._internal.analytics.enabled import is_telemetry_enabled
    from prefect.settings import Settings

    settings = Settings()
    assert settings.server.analytics_enabled is False and settings.home == clean_env.resolve() / ".imgcls" / "prefect"
    assert not is_telemetry_enabled()


def test_quiet_defaults_leave_what_the_user_set(clean_env, monkeypatch):
    monkeypatch.setenv("DO_NOT_TRACK", "0")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    set_now = cli.quiet_defaults()
    assert "DO_NOT_TRACK" not in set_now and "PREFECT_HOME" not in set_now
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    # a server in the user's active Prefect profile counts as set too: their home stays theirs
    profiles = clean_env / "home" / ".prefect" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text('active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert "PREFECT_HOME" not in cli.quiet_defaults()


def test_experiment_opens_on_runs_and_keeps_artifacts_in_the_project(tmp_path, tracking, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # the project root

    experiment_id = store.experiment_id("imgcls")
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path.resolve() / "mlruns" / "imgcls").as_uri()
    assert store.experiment_id("imgcls") == experiment_id

    # an experiment made before (no kind tag) gets the tag; a tracking server picks artifact locations itself
    old = mlflow.MlflowClient().create_experiment("older")
    assert store.experiment_id("older") == old
    assert mlflow.MlflowClient().get_experiment(old).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert store.artifact_location("imgcls", "http://127.0.0.1:5000") is None


def test_summary_line_names_the_seconds_and_counts():
    line = summary_line({"images": 42, "kept": 40, "ratio": 0.5, "ok": True, "flagged": {}, "seconds": 3.0}, 3.14159)
    assert line == "finished in 3.14 s: images=42 kept=40 ratio=0.5"
    assert summary_line(None, 1) == "finished in 1.00 s"


def test_progress_logs_an_estimate_of_the_time_left_when_not_on_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="tasks.checks.confident_learning"):
        with Progress(3, "validate: out-of-fold models", "fold", every=0.0) as progress:
            for _ in range(3):
                progress.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "fold 1/3" in lines[0] and "s left" in lines[0] and lines[-1].endswith("done")
