"""Where MLflow runs and the registry live: decided here and nowhere else.

MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db (a file in the working directory, which is the
project root for the CLI, DVC and the flow). Nothing is set at import; `use()` sets it in MLflow's
fluent API when a stage needs that (train, evaluate)."""
from __future__ import annotations

import os

ENV = "MLFLOW_TRACKING_URI"
DEFAULT = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get(ENV) or DEFAULT


def use(uri: str | None = None) -> str:
    """Point MLflow's fluent API (start_run, log_*, register_model) at `uri`, else at tracking_uri();
    returns the URI used."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri
