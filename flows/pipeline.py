"""The production driver: the eight stages as Prefect tasks, chained, then recorded in DVC.

Each task is `tasks.<stage>.run` with the stage's params from params.yaml: the same code and params
`python -m tasks.<stage>` and `dvc repro` use. Only stages that talk to MLflow (tracking and registry
I/O) retry, and never on a UserError/ParamsError: those do not fix themselves."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows import artifacts, dask_runner, drift, dvc_record
from tasks.common import run_records
from tasks.common.atomic import write_json
from tasks.common.entry import summary_line
from tasks.common.errors import UserError
from tasks.common.params import (
    ParamsError,
    Paths,
    load_stage,
    merge_override,
    parse_section,
    read_yaml,
    validate_file,
)
from tasks.common.versioning import dataset_version
from tasks.common.workspace_lock import workspace_lock
from tasks.stages import STAGES
from tasks.tuning.space import check_section

MODEL_STAGES = ("augment", "train", "evaluate", "promote")
DATA_STAGES = tuple(s for s in STAGES if s not in MODEL_STAGES)
RETRYING_STAGES = ("train", "evaluate", "promote")
RETRIES = 2
RETRY_DELAY_SECONDS = 10
LAST_RUN_FILE = ".last_flow.json"  # under paths.reports: what the last successful full run trained on


def run_stage(stage: str, params_path: str) -> Any:
    params, paths = load_stage(stage, params_path)
    started = time.perf_counter()
    if stage == "train" and training_processes(params) > 1:
        result = train_in_own_processes(params_path, paths)
    else:
        result = STAGES[stage].run(params, paths)
    summary = result.summary() if hasattr(result, "summary") else result
    # the same one line as `python -m tasks.<stage>`, in the task run's log (terminal and Prefect UI)
    get_run_logger().info(summary_line(summary, time.perf_counter() - started))
    return summary


def training_processes(params) -> int:
    """How many processes the train stage's params ask for (devices x num_nodes; every GPU for "auto")."""
    train = STAGES["train"]
    return train.process_count(params, train.device_settings(params)[0])


def train_in_own_processes(params_path: str, paths: Paths) -> dict:
    """DDP from the flow: Lightning's launcher re-runs its process's command once per extra device, so the
    stage runs as `python -m tasks.train` (rank 0, which starts the other ranks) rather than in this
    process. It inherits the flow's workspace lock; its output goes to this process's terminal."""
    command = [sys.executable, "-m", "tasks.train", "--params", params_path]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise UserError(f"train in several processes failed (exit {done.returncode}): `{' '.join(command)}`")
    return run_records.read_run(paths.train_dir)


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def quiet_logging() -> None:
    """What the flow's process shows, set once per flow run: the stages' own INFO lines (validate's
    out-of-fold progress, train's resume notes) next to Prefect's, and nothing a user cannot act on.
    Filters here are for noise from libraries that no setting of ours can turn off."""
    logging.getLogger("tasks").setLevel(logging.INFO)
    import lightning  # noqa: F401  (train imports it anyway; its loggers must exist to be configured)

    if logging.getLogger().handlers:
        # `lightning` always adds its own console handler and still propagates to the root handler
        # Prefect installs: every Lightning line would print twice
        for handler in list(logging.getLogger("lightning").handlers):
            logging.getLogger("lightning").removeHandler(handler)
    # Lightning logs an advertisement for its cloud logger on every Trainer without one; no option
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())
    # Lightning's own _pytree.py uses torch's deprecated LeafSpec (fixed in a later Lightning, not our code)
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)


def _transient(task_, task_run, state) -> bool:
    return not isinstance(state.data, (UserError, ParamsError))


def stage_task(stage: str):
    retries = RETRIES if stage in RETRYING_STAGES else 0
    return task(
        run_stage,
        name=stage,
        task_run_name=stage,
        retries=retries,
        retry_delay_seconds=RETRY_DELAY_SECONDS,
        retry_condition_fn=_transient,
        # every run must look at the data afresh: no Prefect caching, no pickled results on disk
        cache_policy=NO_CACHE,
        persist_result=False,
    )


@task(name="dvc_record", cache_policy=NO_CACHE, persist_result=False)
def record_in_dvc(stages: list[str]) -> dict:
    return dvc_record.record(stages)


def one_run_at_a_time(pipeline):
    """The flow holds the workspace lock (tasks.common.workspace_lock, <paths.cache>/workspace.lock) for
    its whole run: a second `imgcls run`, or a `dvc repro` / `python -m tasks.<stage>`, refuses while it
    works. Its own stages run in-process (re-entrant) and what it spawns (dvc commit) inherits the lock."""

    @functools.wraps(pipeline)
    def locked(*args, **kwargs):
        bound = inspect.signature(pipeline).bind(*args, **kwargs)
        bound.apply_defaults()
        params_path = str(bound.arguments["params_path"])
        paths = parse_section(read_yaml(params_path), "paths", Paths, params_path)
        run_name = flow_run.name or "-"
        with workspace_lock(paths.cache, command=f"imgcls run --params {params_path} (flow run {run_name})"):
            return pipeline(*bound.args, **bound.kwargs)

    return locked


def model_config_digest(data: dict[str, Any]) -> str:
    """Params of the model stages: changing them is a reason to retrain even on the same data."""
    relevant = {stage: data.get(stage) for stage in MODEL_STAGES}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _last_run_path(paths: Paths) -> Path:
    return Path(paths.reports) / LAST_RUN_FILE


def read_last_run(paths: Paths) -> dict | None:
    path = _last_run_path(paths)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:  # a hand-edited or foreign file: treat as no record, i.e. retrain
        return None


def skip_note(last: dict | None, version: str, config: str, force: bool) -> str | None:
    """Why the model stages can be skipped, or None when they must run."""
    if force or not last or last.get("dataset_version") != version or last.get("model_config") != config:
        return None
    return (
        f"no new data since run {last.get('flow_run_name')} ({last.get('flow_run_id')}, "
        f"finished {last.get('finished_at')}): dataset_version {version[:12]} and the "
        f"augment/train/evaluate/promote params are unchanged; use --force to retrain anyway"
    )


# Dask (prefect-dask): the stages' per-image work runs on this runner's cluster (tasks.common.engine)
@flow(name="imgcls-pipeline", log_prints=True, persist_result=False, task_runner=dask_runner.flow_task_runner())
@one_run_at_a_time
def imgcls_pipeline(
    params_path: str = "params.yaml",
    force: bool = False,
    retrain_on_drift: bool = False,
    params_override: str | None = None,
) -> dict:
    params_path = str(params_path)
    base_params = params_path
    if params_override:  # e.g. reports/tune/best_params.yaml: merged over params_path, which stays as it is
        paths = parse_section(read_yaml(params_path), "paths", Paths, params_path)
        params_path = str(merge_override(params_path, params_override, paths.cache))
        print(f"params: {params_override} merged over {base_params} -> {params_path}")
    quiet_logging()
    data = validate_file(params_path)  # a typo anywhere fails now, not after hours of training
    check_section(data, params_path)  # tune: too (nothing in the run reads it, but a typo is a typo)
    paths = parse_section(data, "paths", Paths, params_path)
    summary: dict[str, Any] = {
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "params": params_path,
        "params_override": params_override,
        "force": force,
        "stages": {},
        "skipped": [],
        "note": None,
    }

    for stage in DATA_STAGES:
        summary["stages"][stage] = stage_task(stage)(stage, params_path)
    artifacts.publish_data_quality(paths)

    version = dataset_version(paths)
    config = model_config_digest(data)
    summary["dataset_version"] = version
    last = read_last_run(paths)
    if retrain_on_drift:  # served inputs that moved away from the training set are a reason to retrain
        report = drift.check_drift(paths, missing_ok=True)
        summary["drift"] = {"status": report.get("status"), "retrain": drift.should_retrain(report)}
        force = force or summary["drift"]["retrain"]
    note = skip_note(last, version, config, force)
    if note:
        print(f"skipping {', '.join(MODEL_STAGES)}: {note}")
        summary["skipped"], summary["note"], summary["last_run"] = list(MODEL_STAGES), note, last
        artifacts.publish_skip(note)
    else:
        for stage in MODEL_STAGES:
            summary["stages"][stage] = stage_task(stage)(stage, params_path)
        summary.update(artifacts.publish_model_reports(paths))

    if params_override:
        # dvc.lock records params.yaml's values: committing outputs made with other values would make it lie
        summary["dvc"] = {
            "recorded": False,
            "reason": f"run with --params-override {params_override}: dvc.lock names params.yaml's values, "
            "so this run is not recorded in DVC (for a DVC record: dvc exp run -S ...)",
        }
    else:
        summary["dvc"] = record_in_dvc(list(summary["stages"]))
    if not note:
        write_json(
            {
                "dataset_version": version,
                "model_config": config,
                "flow_run_id": summary["flow_run_id"],
                "flow_run_name": summary["flow_run_name"],
                "mlflow_run_id": summary.get("mlflow_run_id"),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            _last_run_path(paths),
        )
    return summary
