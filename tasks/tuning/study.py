"""Where a study lives and how it is opened: beside the MLflow store, so the same project (or the same
database server) resumes the same study.

- MLflow on sqlite (the default `sqlite:///mlflow.db`): `optuna.db` in the same folder as the MLflow file.
- MLflow on a database server (postgresql://...): the same server and database, in its own schema
  `optuna` (both MLflow and Optuna keep an `alembic_version` table: one schema each keeps them apart).
- MLflow in a folder (file store) or on a tracking server (http[s]://): `optuna.db` in the project root.
- `tune.storage` set: that SQLAlchemy URL as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common.errors import UserError

STUDY_FILE = "optuna.db"
POSTGRES_SCHEMA = "optuna"
SQLITE_TIMEOUT_S = 60  # trials running in parallel threads write to one sqlite file
HEARTBEAT_S = 60  # a trial whose process died is marked failed (and retried once) by the next invocation
DATASET_ATTR = "dataset_version"  # study user attribute: the data its trials were scored on
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attribute: the MLflow run its trials are children of


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""


def storage_url(tracking_uri: str, explicit: str | None = None, root: str | Path | None = None) -> str:
    """The study's SQLAlchemy URL for an MLflow tracking URI (see the module docstring)."""
    if explicit:
        return explicit
    root = Path(root or Path.cwd()).resolve()
    scheme = _scheme(tracking_uri)
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(tracking_uri).database
        if not database or database == ":memory:":
            raise UserError(f"MLflow store {tracking_uri} has no file to put the study beside: set tune.storage")
        folder = (root / database).parent if not Path(database).is_absolute() else Path(database).parent
        return f"sqlite:///{folder.resolve() / STUDY_FILE}"
    if scheme in ("postgresql", "postgres"):
        return tracking_uri
    if scheme in ("", "file", "http", "https", "databricks", "uc"):
        return f"sqlite:///{root / STUDY_FILE}"
    raise UserError(
        f"no default study storage beside an MLflow store on {scheme}://: set tune.storage "
        "to an SQLAlchemy URL (sqlite:///file.db or postgresql://...)"
    )


def redacted(url: str) -> str:
    """The URL with any password masked, for logs, MLflow tags and the summary."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  not an SQLAlchemy URL: show only its scheme
        return f"{_scheme(url)}://..."


def _postgres_engine_kwargs(url: str) -> dict[str, Any]:
    """Create schema `optuna` when missing and point Optuna's connections at it."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}"))
    finally:
        engine.dispose()
    return {"connect_args": {"options": f"-csearch_path={POSTGRES_SCHEMA}"}, "pool_pre_ping": True}


def make_storage(url: str):
    """Optuna's RDBStorage for `url`, with heartbeats so that trials of a killed invocation are marked
    failed and retried once when the study is resumed."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    scheme = _scheme(url)
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        Path(make_url(url).database).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif scheme in ("postgresql", "postgres"):
        engine_kwargs = _postgres_engine_kwargs(url)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8; we rely on them knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except Exception as exc:  # noqa: BLE001  a bad URL or an unreachable server: one line
        raise UserError(f"cannot open the study storage {redacted(url)}: {str(exc).splitlines()[0]}") from None


def make_pruner(tune):
    import optuna

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
        )
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.epochs_per_trial, reduction_factor=3)
    if tune.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=tune.prune_below, n_warmup_steps=tune.pruner_warmup_epochs)
    return optuna.pruners.NopPruner()


def open_study(tune, storage):
    """Create the study or load the one of the same name (resume); always maximises tune.metric."""
    import optuna

    study = optuna.create_study(
        study_name=tune.study_name, storage=storage, direction="maximize", pruner=make_pruner(tune), load_if_exists=True
    )
    # seeded by tune.seed and the trials so far: a resumed study draws new values, not its first ones again;
    # constant_liar: trials running at once (tune.parallel) are steered away from each other
    study.sampler = optuna.samplers.TPESampler(seed=tune.seed + len(study.trials), constant_liar=True)
    return study


def check_dataset(study, version: str) -> None:
    """A study's trials are comparable only on the same data: refuse to add trials scored on other data."""
    recorded = study.user_attrs.get(DATASET_ATTR)
    if recorded is None:
        study.set_user_attr(DATASET_ATTR, version)
    elif recorded != version:
        raise UserError(
            f"study {study.study_name!r} was scored on dataset_version {recorded[:12]}, the data is now "
            f"{version[:12]}: set another tune.study_name for a new study on this data"
        )


def counts(study) -> dict[str, int]:
    """Trials of the study by state, lower-case (complete, pruned, fail, running, waiting)."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.state.name.lower()
        out[key] = out.get(key, 0) + 1
    return out
