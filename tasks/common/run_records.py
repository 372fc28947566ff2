"""The two small records train leaves beside its checkpoints in paths.train_dir, and the one place that
knows their names, writes them (atomically) and reads them back.

run.json (written when a training run has finished and exported its model; read by evaluate, promote
and the flow's artifacts):
    run_id, experiment_id, tracking_uri (the store the run lives in), model_uri (the logged model, models:/m-...),
    dataset_version, baseline_run_id.

resume.json (train's own bookkeeping, rewritten at the start and the end of every run):
    run_id, experiment_id, fingerprint (params + data + prepared store), completed (bool).
    A run killed before `completed` is true resumes from last.ckpt in the same MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.common.atomic import write_json
from tasks.common.errors import UserError

RUN_FILE = "run.json"
RESUME_FILE = "resume.json"
# what every reader of run.json relies on; train always writes them
RUN_REQUIRED = ("run_id", "model_uri")


def run_path(train_dir: str | Path) -> Path:
    return Path(train_dir) / RUN_FILE


def resume_path(train_dir: str | Path) -> Path:
    return Path(train_dir) / RESUME_FILE


def write_run(
    train_dir: str | Path,
    *,
    run_id: str,
    experiment_id: str,
    tracking_uri: str,
    dataset_version: str,
    baseline_run_id: str | None = None,
    model_uri: str | None = None,
) -> dict[str, Any]:
    """Write run.json for a finished training run; returns what was written. model_uri: the logged
    model (MLflow 3's models:/m-...; registering runs:/<id>/model makes MLflow warn and look it up)."""
    info = {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "tracking_uri": tracking_uri,
        "model_uri": model_uri or f"runs:/{run_id}/model",
        "dataset_version": dataset_version,
        "baseline_run_id": baseline_run_id,
    }
    write_json(info, run_path(train_dir))
    return info


def read_run(train_dir: str | Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """run.json as a dict. A missing file is a UserError (or None with missing_ok); a file that is not
    a JSON object or lacks run_id/model_uri is always a UserError naming the file."""
    path = run_path(train_dir)
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"{path} not found: run the `train` stage first")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not readable as JSON ({exc}): run the `train` stage again") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(info).__name__}: run the `train` stage again")
    missing = [key for key in RUN_REQUIRED if not info.get(key)]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}: run the `train` stage again")
    return info


def write_resume(train_dir: str | Path, *, run_id: str, experiment_id: str, fingerprint: str, completed: bool) -> Path:
    return write_json(
        {"run_id": run_id, "experiment_id": experiment_id, "fingerprint": fingerprint, "completed": completed},
        resume_path(train_dir),
    )


def read_resume(train_dir: str | Path) -> dict[str, Any]:
    """resume.json, or {} when it is missing or unreadable: then nothing is resumed and train starts a
    fresh run, which is always safe."""
    try:
        state = json.loads(resume_path(train_dir).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


# ---- registration tags on the training run --------------------------------------------------------
# Every trained model is either registered or its MLflow run says why not: train leaves the run marked
# "not registered: promote has not run"; promote marks it registered (with the version) or records the
# error that stopped registration.
REGISTERED_TAG = "imgcls.registered"
NOT_REGISTERED_REASON_TAG = "imgcls.not_registered_reason"
REGISTERED_MODEL_TAG = "imgcls.registered_model"
REGISTERED_VERSION_TAG = "imgcls.registered_version"
PENDING_REASON = "promote has not run on this model yet"


def pending_registration_tags() -> dict[str, str]:
    return {REGISTERED_TAG: "false", NOT_REGISTERED_REASON_TAG: PENDING_REASON}


def mark_registered(client, run_id: str, model_name: str, version: str) -> None:
    client.set_tag(run_id, REGISTERED_TAG, "true")
    client.set_tag(run_id, REGISTERED_MODEL_TAG, model_name)
    client.set_tag(run_id, REGISTERED_VERSION_TAG, str(version))
    if NOT_REGISTERED_REASON_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, NOT_REGISTERED_REASON_TAG)


def mark_not_registered(client, run_id: str, reason: str) -> None:
    client.set_tag(run_id, REGISTERED_TAG, "false")
    client.set_tag(run_id, NOT_REGISTERED_REASON_TAG, reason[:5000])  # MLflow caps tag values
