"""`imgcls tune`: an Optuna study over the train stage's settings on the prepared store the pipeline made.

One MLflow parent run per study (tag imgcls.kind=tune; the same run again when the study is resumed) with
each trial a child run; the study itself in a database beside the MLflow store (tasks.tuning.study), so
running `imgcls tune` again adds trials to the same study. The result is reports/tune/best_params.yaml
(a `train:` section only) and the commands that apply it; params.yaml is never edited."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tasks.common import prepared as prepared_store
from tasks.common import tracking
from tasks.common.atomic import write_csv, write_json
from tasks.common.params import DEFAULT_PARAMS, Paths, parse_section, validate_file
from tasks.common.versioning import dataset_version, git_commit
from tasks.common.workspace_lock import workspace_lock
from tasks.tuning import best as best_files
from tasks.tuning import study as studies
from tasks.tuning.objective import KIND_TAG, RUN_ATTR, TrialContext, run_trial
from tasks.tuning.space import TuneParams, check_space

log = logging.getLogger(__name__)
REPORT = "tune"  # reports/tune/


def load(params_path: str | Path = DEFAULT_PARAMS) -> tuple[TuneParams, Any, Paths]:
    """(tune, train, paths) of a params file, the whole file validated and the search space checked
    against train's Params: every mistake is one ParamsError line before anything runs."""
    from tasks.train import Params as TrainParams

    data = validate_file(params_path)
    tune = parse_section(data, "tune", TuneParams, params_path)
    train = parse_section(data, "train", TrainParams, params_path)
    check_space(tune, train)
    return tune, train, parse_section(data, "paths", Paths, params_path)


def parent_run(study, experiment_id: str, tune: TuneParams, storage_url: str, version: str) -> str:
    """The study's MLflow parent run: the one recorded on the study when it still exists in this
    experiment, else a new one (recorded on the study). Marked RUNNING for this invocation."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = study.user_attrs.get(studies.PARENT_RUN_ATTR)
    if run_id:
        try:
            found = client.get_run(run_id)
            if found.info.lifecycle_stage != "active" or found.info.experiment_id != experiment_id:
                run_id = None
        except mlflow.exceptions.MlflowException:
            run_id = None
    if not run_id:
        tags = {
            KIND_TAG: "tune",
            "optuna.study_name": tune.study_name,
            "optuna.storage": studies.redacted(storage_url),
            "optuna.metric": tune.metric,
            "dataset_version": version,
        }
        run_id = client.create_run(experiment_id, tags=tags, run_name=f"tune-{tune.study_name}").info.run_id
        study.set_user_attr(studies.PARENT_RUN_ATTR, run_id)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "git_commit", git_commit())
    return run_id


def _trials_table(study):
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds()
    return frame


def record(study, tune: TuneParams, parent_id: str, report_dir: Path, storage_url: str) -> dict[str, Any]:
    """reports/tune/ and the parent run after an invocation: trials.csv, best_params.yaml and
    dvc_exp_command.txt (removed when no trial has completed, so none is stale), summary.json; the
    parent's best value (metric), best values (tags best.train.<key>) and files."""
    import mlflow

    client = mlflow.MlflowClient()
    by_state = studies.counts(study)
    write_csv(_trials_table(study), report_dir / best_files.TRIALS)
    top = best_files.best_trial(study)
    summary: dict[str, Any] = {
        "study": tune.study_name,
        "storage": studies.redacted(storage_url),
        "mlflow_parent_run_id": parent_id,
        "metric": tune.metric,
        "trials": len(study.trials),
        "by_state": by_state,
    }
    for name in (best_files.BEST_PARAMS, best_files.DVC_COMMAND):
        (report_dir / name).unlink(missing_ok=True)
    if top is not None:
        header = (
            f"imgcls tune: best trial of study {tune.study_name!r} (trial {top.number}, {tune.metric} "
            f"{top.value:.4f} after {tune.epochs_per_trial} epoch(s) per trial, {len(study.trials)} trials)\n"
            f"apply: {best_files.run_command(report_dir / best_files.BEST_PARAMS)}\n"
            "merged over params.yaml's train section (params.yaml itself is not changed)"
        )
        files = best_files.write_best(top.params, report_dir, header)
        summary |= {
            "best_value": top.value,
            "best_trial": top.number,
            "best_params": {k: best_files.plain(v) for k, v in top.params.items()},
            "best_trial_run_id": top.user_attrs.get(RUN_ATTR),
        } | files
        client.log_metric(parent_id, "tune/best_value", top.value, step=len(study.trials))
        for key, value in top.params.items():
            client.set_tag(parent_id, f"best.train.{key}", str(best_files.plain(value)))
        client.set_tag(parent_id, "best.trial", str(top.number))
        client.log_artifact(parent_id, files["best_params_file"])
        client.log_artifact(parent_id, files["dvc_command_file"])
    for state, n in by_state.items():
        client.log_metric(parent_id, f"tune/trials_{state}", n, step=len(study.trials))
    client.log_dict(parent_id, tune.model_dump(), "tune_params.json")
    write_json(summary, report_dir / best_files.SUMMARY)
    return summary


def tune(params_path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Run one invocation of the study (tune.n_trials more trials, or until tune.timeout_minutes) and
    record it; returns the summary (best value, params, commands, files)."""

    tune_params, train, paths = load(params_path)
    # trials read data/prepared for minutes: a concurrent `imgcls run` / `dvc repro` must not rewrite it
    with workspace_lock(paths.cache, command=f"imgcls tune --params {params_path}"):
        return _tune(params_path, tune_params, train, paths)


def _tune(params_path, tune_params: TuneParams, train, paths: Paths) -> dict[str, Any]:
    import mlflow
    import torch

    prepared = prepared_store.require(paths.prepared)
    version = dataset_version(paths)
    uri = tracking.use()
    url = studies.storage_url(uri, tune_params.storage)
    study = studies.open_study(tune_params, studies.make_storage(url))
    studies.check_dataset(study, version)
    experiment_id = tracking.experiment_id(tune_params.experiment)
    parent_id = parent_run(study, experiment_id, tune_params, url, version)
    ctx = TrialContext(
        tune=tune_params,
        train=train,
        prepared=prepared,
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        tracking_uri=uri,
        dataset_version=version,
        git_commit=git_commit(),
    )
    before = len(study.trials)
    log.info("study %r in %s: %d trials so far", tune_params.study_name, studies.redacted(url), before)
    status = "FAILED"
    try:
        study.optimize(
            lambda trial: run_trial(trial, ctx),
            n_trials=tune_params.n_trials,
            timeout=tune_params.timeout_minutes * 60 if tune_params.timeout_minutes else None,
            n_jobs=tune_params.parallel,
            catch=(torch.OutOfMemoryError,),  # a batch size too large for the device fails that trial only
            gc_after_trial=True,
        )
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary = record(study, tune_params, parent_id, paths.report_dir(REPORT), url)
        mlflow.MlflowClient().set_terminated(parent_id, status)
    return summary | {"new_trials": len(study.trials) - before}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    states = ", ".join(f"{n} {state}" for state, n in sorted(summary["by_state"].items()))
    lines = [
        f"study {summary['study']!r} ({summary['storage']}): {summary['trials']} trials ({states}), "
        f"{summary['new_trials']} new; MLflow parent run {summary['mlflow_parent_run_id']}"
    ]
    if "best_value" not in summary:
        return [*lines, "no trial has completed yet: no best parameters"]
    return [
        *lines,
        f"best {summary['metric']} {summary['best_value']:.4f} (trial {summary['best_trial']}): "
        + json.dumps(summary["best_params"]),
        f"best parameters: {summary['best_params_file']} (a train: section; params.yaml is unchanged)",
        "train with them:",
        f"  {summary['run_command']}",
        f"  {summary['dvc_command']}    (also in {summary['dvc_command_file']})",
    ]
