"""The MLflow Model Registry as promote sees it: one connection, alias reads, version tags, and an
inter-process lock that serializes every alias change (automatic or manual)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import os
from collections.abc import Iterator
from pathlib import Path

from tasks.common import tracking
from tasks.common.errors import UserError

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"


def tracking_uri() -> str:
    """The project's store (tasks.common.tracking: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the
    working directory), which is also what the fluent calls used here (register_model,
    pyfunc.load_model) resolve unless a stage pointed them elsewhere. Never set process-wide here, so
    nothing leaks into callers."""
    return tracking.tracking_uri()


def connect():
    import mlflow
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=mlflow.get_registry_uri())


def lock_path(cache: str | Path, uri: str | None = None) -> Path:
    """Beside the sqlite DB when there is one (every project sharing that DB then shares the lock),
    else in the project's cache folder."""
    db = tracking.sqlite_file(uri or tracking_uri())
    if db is not None:
        return db.with_name(db.name + ".promote.lock")
    return Path(cache) / "promote.lock"


@contextlib.contextmanager
def registry_lock(path: str | Path) -> Iterator[None]:
    """Exclusive flock: released by the kernel if the holder dies, so a crash never wedges promotion."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def aliases(client, name: str) -> dict[str, str]:
    """alias -> version (as str, like ModelVersion.version) of a registered model; UserError when the
    model is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"no registered model named {name!r} in {tracking_uri()}") from None
        raise


def model_exists(client, name: str) -> bool:
    try:
        aliases(client, name)
    except UserError:
        return False
    return True


def model_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    aliases(client, name)  # a clear message when the whole model is missing
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UserError(f"model {name!r} has no version {version}") from None
        raise


def set_tags(client, name: str, version: str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def move_alias(client, name: str, alias: str, version: str | None) -> None:
    """Point `alias` at `version`, or remove it when version is None."""
    if version is None:
        if alias in aliases(client, name):
            client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER", "unknown")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
