"""train: fit a network on the prepared store with Lightning, track it in MLflow, export the pyfunc.

Outputs in paths.train_dir: last.ckpt (every `checkpoint_every_n_steps` steps and every epoch),
best.ckpt (best val/acc), model/ (the MLflow pyfunc, also logged to the run as "model"), run.json,
and resume.json, the small state that lets a killed run continue: re-running with the same params
and data resumes from last.ckpt inside the same MLflow run.

dataset_version is tasks.common.versioning.dataset_version (sha256 of the split manifest's (image_id, label,
split) rows, the same value the Prefect flow records); the resume fingerprint also hashes the
prepared store's index and specs, so changed augmentation params start a fresh run."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.common import prepared as prepared_store
from tasks.common.atomic import atomic_dir, write_json
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.params import Paths, Strict
from tasks.common.versioning import dataset_version, git_commit

log = logging.getLogger(__name__)
STATE_FILE = "resume.json"
# params that change how fast training runs, not what it computes: a resume may differ in them
NOT_FINGERPRINTED = {"num_workers", "max_time_minutes"}


class Params(Strict):
    network: str = "resnet_small"              # resnet_small (built in) or any timm architecture name
    pretrained_path: str | None = None         # local .safetensors to start from; never downloaded
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weights: Literal["balanced"] | list[float] | None = None
    freeze_backbone_epochs: int = Field(0, ge=0)
    early_stopping_patience: int | None = Field(5, ge=1)  # on val/acc; null: off
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    deterministic: bool = False
    experiment: str = "imgcls"
    max_time_minutes: float | None = Field(None, gt=0)
    checkpoint_every_n_steps: int = Field(100, ge=1)
    limit_train_batches: int | float | None = None  # tests and smoke runs: batches (int) or fraction
    limit_val_batches: int | float | None = None


def flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(f"{prefix}.{key}", item).items()}
    return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}


def fingerprint(params: Params, version: str, prepared: Path) -> str:
    digest = hashlib.sha256(json.dumps(params.model_dump(exclude=NOT_FINGERPRINTED), sort_keys=True).encode())
    digest.update(version.encode())
    for name in prepared_store.FINGERPRINTED:
        digest.update((prepared / name).read_bytes())
    return digest.hexdigest()


def read_state(train_dir: Path) -> dict:
    try:
        return json.loads((train_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def device_settings(params: Params) -> tuple[bool, str, bool]:
    """(on GPU, precision, channels_last) with "auto" resolved for this machine."""
    import torch

    gpu = params.accelerator in ("gpu", "cuda") or (params.accelerator == "auto" and torch.cuda.is_available())
    precision = params.precision
    if precision == "auto":
        precision = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
    channels_last = gpu if params.channels_last == "auto" else params.channels_last
    return gpu, precision, channels_last


def loss_weights(params: Params, counts) -> list[float] | None:
    if params.class_weights is None:
        return None
    if params.class_weights == "balanced":
        return [float(counts.sum() / (len(counts) * max(int(c), 1))) for c in counts]
    if len(params.class_weights) != len(counts):
        raise UserError(f"train.class_weights has {len(params.class_weights)} values for {len(counts)} classes")
    return list(params.class_weights)


def make_callbacks(params: Params, train_dir: Path) -> tuple:
    """(the best-checkpoint callback, all callbacks)."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from models.callbacks import FreezeBackbone

    best = ModelCheckpoint(dirpath=train_dir, filename="best", monitor="val/acc", mode="max", save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False)
    # two writers of last.ckpt: every N steps (a kill mid-epoch loses little) and every epoch end
    step_last = ModelCheckpoint(dirpath=train_dir, filename="last", every_n_train_steps=params.checkpoint_every_n_steps,
                                save_top_k=1, enable_version_counter=False)
    epoch_last = ModelCheckpoint(dirpath=train_dir, filename="last", every_n_epochs=1, save_top_k=1,
                                 enable_version_counter=False)
    callbacks = [best, step_last, epoch_last, LearningRateMonitor(logging_interval="epoch")]
    if params.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=params.early_stopping_patience))
    if params.freeze_backbone_epochs:
        callbacks.append(FreezeBackbone(params.freeze_backbone_epochs))
    return best, callbacks


def run_exists(run_id: str | None) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return bool(run_id) and mlflow.MlflowClient().get_run(run_id) is not None
    except MlflowException:
        return False


def experiment_id_for(name: str) -> str:
    """The experiment's id, created when missing. Unlike mlflow.set_experiment this leaves no process-wide
    state (set_experiment also exports MLFLOW_EXPERIMENT_ID, which would follow into later runs and
    subprocesses that use another tracking store)."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def run(params: Params, paths: Paths) -> dict:
    import lightning as L
    import mlflow
    import numpy as np
    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    from models.data import PreparedDataModule
    from models.module import ImageClassifier
    from models.networks import load_pretrained
    from models.predictor import save_model_files
    from models.pyfunc import log_pyfunc, save_pyfunc

    prepared, train_dir = Path(paths.prepared), Path(paths.train_dir)
    gpu, precision, channels_last = device_settings(params)
    data = PreparedDataModule(prepared, params.batch_size, params.num_workers, params.seed, pin_memory=gpu)
    version = dataset_version(paths)
    config_hash = fingerprint(params, version, prepared)

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    mlflow.set_tracking_uri(tracking_uri)

    state, last = read_state(train_dir), train_dir / "last.ckpt"
    resume = (last.is_file() and not state.get("completed", True) and state.get("fingerprint") == config_hash
              and run_exists(state.get("run_id")))
    if not resume:  # checkpoints of another configuration (or run) must not be resumed or exported
        for stale in ("last.ckpt", "best.ckpt"):
            (train_dir / stale).unlink(missing_ok=True)
    experiment_id = experiment_id_for(params.experiment)
    L.seed_everything(params.seed, workers=True, verbose=False)
    started = time.perf_counter()

    with mlflow.start_run(run_id=state["run_id"] if resume else None, experiment_id=experiment_id,
                          run_name=None if resume else f"train-{params.network}") as active:
        run_id = active.info.run_id
        write_json({"run_id": run_id, "experiment_id": experiment_id, "fingerprint": config_hash, "completed": False},
                   train_dir / STATE_FILE)
        mlflow.set_tags({"git_commit": git_commit(), "dataset_version": version, "stage": "train"})
        # idempotent: a resumed run logs the same values again
        mlflow.log_params(flatten("train", params.model_dump()) | {
            "data.num_classes": str(len(data.classes)), "data.train_rows": str(len(data.train_index)),
            "data.val_rows": str(len(data.val_index)), "data.image_size": str(data.stats["image_size"]),
            "data.channels": str(data.stats["channels"]), "resolved.precision": precision,
            "resolved.channels_last": str(channels_last),
        })
        for artifact in (prepared / prepared_store.TRAIN_SPEC, prepared / prepared_store.CLASSES, paths.report_dir("augment") / "preview.png"):
            if artifact.is_file():
                mlflow.log_artifact(str(artifact))

        module = ImageClassifier(
            params.network, data.classes, data.stats, optimizer=params.optimizer, lr=params.lr,
            weight_decay=params.weight_decay, scheduler=params.scheduler, warmup_epochs=params.warmup_epochs,
            label_smoothing=params.label_smoothing, class_weights=loss_weights(params, data.class_counts()),
            channels_last=channels_last,
        )
        reinitialised: list[str] = []
        if params.pretrained_path and not resume:  # a resumed run takes every weight from last.ckpt
            reinitialised = load_pretrained(module.network, params.pretrained_path)
            mlflow.log_dict({"pretrained_path": params.pretrained_path, "reinitialised": reinitialised}, "pretrained.json")

        best, callbacks = make_callbacks(params, train_dir)
        trainer = L.Trainer(
            max_epochs=params.epochs, accelerator=params.accelerator, devices=params.devices, precision=precision,
            deterministic=params.deterministic, callbacks=callbacks, default_root_dir=train_dir,
            logger=MLFlowLogger(experiment_name=params.experiment, tracking_uri=tracking_uri, run_id=run_id),
            max_time={"minutes": params.max_time_minutes} if params.max_time_minutes else None,
            limit_train_batches=params.limit_train_batches, limit_val_batches=params.limit_val_batches,
            log_every_n_steps=1,
        )
        resumed_from = None
        if resume:
            checkpoint = torch.load(last, map_location="cpu", weights_only=True)
            resumed_from = {"epoch": int(checkpoint["epoch"]), "global_step": int(checkpoint["global_step"])}
            log.info("resuming MLflow run %s from %s (epoch %d, step %d)", run_id, last, *resumed_from.values())
        first_epoch = resumed_from["epoch"] if resumed_from else 0
        fit_started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            # resume.json and run.json live beside the checkpoints by design
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None, weights_only=True)
        epochs_run = max(1, trainer.current_epoch - first_epoch)
        seconds_per_epoch = (time.perf_counter() - fit_started) / epochs_run

        if Path(best.best_model_path or "").is_file():
            checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(checkpoint["state_dict"])
        best_acc = float(best.best_model_score) if best.best_model_score is not None else float("nan")
        mlflow.log_metrics({"val/best_acc": best_acc, "train/seconds_per_epoch": seconds_per_epoch,
                            "train/epochs": float(trainer.current_epoch)})

        # the pyfunc: files written once, saved to train_dir/model and logged to the run as "model"
        example_image = prepared_store.open_images(prepared)[int(data.val_index["row"].iloc[0])]
        with tempfile.TemporaryDirectory() as tmp:
            files = save_model_files(tmp, params.network, module.network, data.classes, data.stats)
            with atomic_dir(train_dir / "model") as model_dir:
                save_pyfunc(model_dir, files, example_image)
            log_pyfunc(files, example_image)

    info = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri,
            "model_uri": f"runs:/{run_id}/model", "dataset_version": version, "baseline_run_id": None}
    write_json(info, train_dir / "run.json")
    write_json({"run_id": run_id, "experiment_id": experiment_id, "fingerprint": config_hash, "completed": True},
               train_dir / STATE_FILE)
    return info | {
        "epochs": trainer.current_epoch, "resumed_from": resumed_from, "best_val_acc": best_acc,
        "seconds_per_epoch": round(seconds_per_epoch, 3), "seconds": round(time.perf_counter() - started, 1),
        "precision": precision, "reinitialised": reinitialised,
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
