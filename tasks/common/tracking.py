"""Where MLflow runs, their artifacts and the registry live: decided here and nowhere else.

MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db (a file in the working directory, which is the
project root for the CLI, DVC and the flow). Nothing is set at import; `use()` sets it in MLflow's
fluent API when a stage needs that (train, evaluate).

Artifacts: a store MLflow opens directly (sqlite, a database URI, a folder) would put an experiment's
artifacts in ./mlruns of whatever directory the process started in; `experiment_id()` creates the
experiment with its artifact location pinned to <project root>/mlruns/<experiment> instead (absolute),
so every project on a machine keeps its runs and models beside its own mlflow.db. A tracking server
(http[s]://) decides artifact locations itself (--artifacts-destination): left to it."""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV = "MLFLOW_TRACKING_URI"
DEFAULT = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlruns"  # under the project root (gitignored)
# MLflow 3's UI opens an experiment by its kind: without this tag it may guess "GenAI" and open on an
# Overview/traces page; custom_model_development opens on the training runs (mlflow/server/js: experimentKind)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SERVER_SCHEMES = ("http", "https", "databricks", "uc")


def tracking_uri() -> str:
    return os.environ.get(ENV) or DEFAULT


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (query string dropped), None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def use(uri: str | None = None) -> str:
    """Point MLflow's fluent API (start_run, log_*, register_model) at `uri`, else at tracking_uri();
    returns the URI used."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def artifact_location(name: str, uri: str | None = None, root: str | Path | None = None) -> str | None:
    """Where a new experiment `name` of store `uri` keeps its artifacts: <root>/mlruns/<name> as a file
    URI (root: the project root, i.e. the working directory), or None for a tracking server, which decides."""
    uri = uri or tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0].lower() in SERVER_SCHEMES:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "experiment"
    return (Path(root or Path.cwd()).resolve() / ARTIFACTS_DIR / folder).as_uri()


def experiment_id(name: str, root: str | Path | None = None) -> str:
    """The id of experiment `name` in the current tracking store, created when missing with its
    artifact location under the project (artifact_location) and the kind tag that makes MLflow's UI
    open on its runs; an existing experiment without the tag gets it. Leaves no process-wide state
    (unlike mlflow.set_experiment, which exports MLFLOW_EXPERIMENT_ID to later runs and subprocesses)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location(name, root=root), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:  # created meanwhile by another process: use theirs
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id
