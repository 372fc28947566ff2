"""One trial: train's own pieces (device settings, the LightningModule, the Trainer, fit) on the prepared
store, with the trial's values over params.yaml's train section, recorded as a child MLflow run of the
study's parent run. Pruned through optuna-integration's Lightning callback on `tune.metric` each epoch.

A trial keeps its checkpoints in a temporary folder that is deleted when it ends: it exports, logs and
registers no model (the chosen configuration is trained for real by `imgcls run` / `dvc exp run`)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KIND_TAG = "imgcls.kind"  # "tune" on the parent run, "tune_trial" on each trial's run
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs by
STATE_TAG = "optuna.trial_state"  # COMPLETE / PRUNED / FAIL, as the study records it
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one invocation shares."""

    tune: Any  # TuneParams
    train: Any  # train's Params from the same params file
    prepared: Path
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    dataset_version: str
    git_commit: str


def _metric_history():
    from lightning.pytorch.callbacks import Callback

    class MetricHistory(Callback):
        """The monitored metric after every validation epoch (not the sanity check)."""

        def __init__(self, metric: str) -> None:
            self.metric, self.values = metric, []

        def on_validation_end(self, trainer, pl_module) -> None:
            value = trainer.callback_metrics.get(self.metric)
            if not trainer.sanity_checking and value is not None:
                self.values.append(float(value))

    return MetricHistory


def child_tags(ctx: TrialContext, number: int) -> dict[str, str]:
    return {
        PARENT_TAG: ctx.parent_run_id,
        KIND_TAG: "tune_trial",
        "optuna.study_name": ctx.tune.study_name,
        "optuna.trial_number": str(number),
        "git_commit": ctx.git_commit,
        "dataset_version": ctx.dataset_version,
    }


def run_trial(trial, ctx: TrialContext) -> float:
    """Train one trial and return the best value of tune.metric over its epochs; raises
    optuna.TrialPruned when the pruner stops it (its run then ends KILLED, tagged PRUNED)."""
    import lightning as L
    import mlflow
    import optuna
    from lightning.pytorch.callbacks import ProgressBar
    from optuna_integration import PyTorchLightningPruningCallback

    from tasks import train as train_stage
    from tasks.tuning.space import suggest, trial_params

    values = suggest(trial, ctx.tune.space)
    params = trial_params(ctx.train, ctx.tune, values)
    client = mlflow.MlflowClient(ctx.tracking_uri)
    run = client.create_run(ctx.experiment_id, tags=child_tags(ctx, trial.number), run_name=f"trial-{trial.number}")
    run_id = run.info.run_id
    trial.set_user_attr(RUN_ATTR, run_id)
    log.info("trial %d (MLflow run %s): %s", trial.number, run_id, values)

    mlflow.start_run(run_id=run_id)  # this thread's active run: what train's fluent logging writes to
    status, state = "FAILED", "FAIL"
    try:
        gpu, precision, channels_last = train_stage.device_settings(params)
        params, data = train_stage.prepared_data(params, Path(ctx.prepared), gpu)
        mlflow.log_params(train_stage.flatten("train", params.model_dump()))
        L.seed_everything(params.seed, workers=True, verbose=False)
        module, _ = train_stage.build_module(params, data, channels_last, fresh=True)
        with tempfile.TemporaryDirectory(prefix=f"imgcls-trial-{trial.number}-") as trial_dir:
            trainer, _best = train_stage.build_trainer(params, Path(trial_dir), precision, ctx.tracking_uri, run_id)
            history = _metric_history()(ctx.tune.metric)
            if ctx.tune.parallel > 1:  # one terminal, several trials: no live progress bars (nor rich's races)
                trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ProgressBar)]
            # after train's own callbacks: the history has this epoch's value when the pruner decides
            trainer.callbacks.extend([history, PyTorchLightningPruningCallback(trial, monitor=ctx.tune.metric)])
            try:
                _, seconds_per_epoch = train_stage.fit(trainer, module, data, None)
            except optuna.TrialPruned:
                status, state = "KILLED", "PRUNED"
                mlflow.log_metrics({"tune/epochs": float(len(history.values))})
                raise
        if not history.values:
            raise RuntimeError(f"{ctx.tune.metric} was never logged: no validation epoch ran")
        value = max(history.values)
        mlflow.log_metrics(
            {
                "tune/objective": value,
                "tune/epochs": float(len(history.values)),
                "train/seconds_per_epoch": seconds_per_epoch,
            }
        )
        status, state = "FINISHED", "COMPLETE"
        return value
    finally:
        mlflow.set_tag(STATE_TAG, state)
        mlflow.end_run(status)
