"""train: fit a network on the prepared store with Lightning, track it in MLflow, export the pyfunc.

Outputs in paths.train_dir: last.ckpt (every `checkpoint_every_n_steps` steps and every epoch),
best.ckpt (best val/acc), model/ (the MLflow pyfunc, also logged to the run as "model"), run.json,
and resume.json, the small state that lets a killed run continue: re-running with the same params
and data resumes from last.ckpt inside the same MLflow run (both records: tasks.common.run_records).
The run is left tagged imgcls.registered=false until promote registers its model.

Several processes (train.devices > 1 or train.num_nodes > 1; Lightning's DDP): started by `python -m
tasks.train` itself (Lightning re-runs the command once per extra local device), by torchrun or by srun.
Rank 0 alone decides whether to resume, opens the MLflow run, logs params, metrics and artifacts,
calibrates, exports and writes run.json / resume.json; it hands the decision (run id, resume or not)
to the other ranks through IMGCLS_TRAIN_PLAN (children of Lightning's launcher inherit it) or a
broadcast (processes started by torchrun / srun), which then only train (docs/scaling.md).

dataset_version is tasks.common.versioning.dataset_version (sha256 of the split manifest's (image_id, label,
split) rows, the same value the Prefect flow records); the resume fingerprint also hashes the
prepared store's index and specs, so changed augmentation params start a fresh run."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tasks.common import prepared as prepared_store
from tasks.common import run_records, tracking
from tasks.common.atomic import atomic_dir
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.params import Paths, Strict
from tasks.common.versioning import dataset_version, git_commit

log = logging.getLogger(__name__)
LAST_CKPT, BEST_CKPT = "last.ckpt", "best.ckpt"
# batch_size "auto": a batch of 128 starves a GPU (the H200's Lightning / plain loop ratio was 0.70 at 128
# and 0.94-0.97 at 512, BENCHMARKS.md "GPU"); small data keeps 128, so an epoch still has enough steps
CPU_BATCH = 128
GPU_BATCHES = (512, 256)
MIN_STEPS_PER_EPOCH = 100
# num_workers "auto": 2 on CPU (on this project's 2-core machine 0-2 workers made no difference); on a GPU
# one per core less one per training process, at most 12: on a 16-core H200 host 12 workers supplied
# 58k images/s; at that rate 2 would supply about 10k, a third of what its Lightning loop took (BENCHMARKS.md)
CPU_WORKERS = 2
GPU_MAX_WORKERS = 12
# params that change how fast training runs, not what it computes: a resume may differ in them
NOT_FINGERPRINTED = {"num_workers", "max_time_minutes", "fit_schedule_to_time"}
DATASET_DIGEST_CHARS = 12  # of dataset_version, as MLflow's dataset digest
# rank 0's decision (MLflow run id, resume or not) for the ranks Lightning's launcher starts: they
# re-run `python -m tasks.train` with rank 0's environment, so this variable reaches them
PLAN_ENV = "IMGCLS_TRAIN_PLAN"


class Params(Strict):
    """Checked up front (params validation, before anything is deleted or a run opened): the network
    must be one models.networks can build, and every count, size and limit must be one that makes sense."""

    network: str = "resnet_small"  # resnet_small / resnet_tiny (built in) or a timm architecture name
    pretrained_path: str | None = None  # local .safetensors to start from; never downloaded
    epochs: int = Field(15, ge=1)
    # "auto": CPU_BATCH on CPU; on GPU the largest of GPU_BATCHES that keeps MIN_STEPS_PER_EPOCH steps
    # an epoch, with lr scaled by sqrt(batch / CPU_BATCH) (resolved_for_data)
    batch_size: int | Literal["auto"] = "auto"
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weights: Literal["balanced"] | list[float] | None = None  # list: one weight >= 0 per class
    freeze_backbone_epochs: int = Field(0, ge=0)
    early_stopping_patience: int | None = Field(5, ge=1)  # on val/acc; null: off
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = "auto"  # a device count >= 1 per node; "auto": all of them
    # "auto": Lightning's choice (DDP when there are several devices or nodes); "ddp": always DDP
    strategy: Literal["auto", "ddp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    channels_last: bool | Literal["auto"] = "auto"
    num_workers: int | Literal["auto"] = "auto"  # DataLoader processes per training process (loader_workers)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's seed range
    deterministic: bool = False
    experiment: str = Field("imgcls", min_length=1)
    max_time_minutes: float | None = Field(None, gt=0)
    # with max_time_minutes: after each epoch, shorten the run to the epochs that fit and end the LR
    # schedule with them (models.callbacks.FitScheduleToTime); false: the run is cut where time runs out
    fit_schedule_to_time: bool = True
    checkpoint_every_n_steps: int = Field(100, ge=1)
    limit_train_batches: int | float | None = None  # tests and smoke runs: batches (int) or fraction
    limit_val_batches: int | float | None = None
    calibrate: bool = True  # temperature scaling on the val split (models/calibration.py)

    @field_validator("network")
    @classmethod
    def _known_network(cls, name: str) -> str:
        problem = network_problem(name)
        if problem:
            raise PydanticCustomError("unknown_network", problem)
        return name

    # "before" validators: one clear message instead of one per member of the union type
    @field_validator("devices", "batch_size", mode="before")
    @classmethod
    def _count_or_auto(cls, value, info: ValidationInfo):
        if value == "auto" or _is_int(value) and value >= 1:
            return value
        noun = {"devices": "a device count", "batch_size": "a batch size"}[info.field_name]
        raise PydanticCustomError(info.field_name, f"must be {noun} >= 1 or 'auto'")

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers_or_auto(cls, value):
        if value == "auto" or _is_int(value) and value >= 0:
            return value
        raise PydanticCustomError("num_workers", "must be a worker count >= 0 or 'auto'")

    @field_validator("limit_train_batches", "limit_val_batches", mode="before")
    @classmethod
    def _batch_limit(cls, value):
        if value is None or _is_int(value) and value >= 1 or _is_number(value) and 0 < value <= 1:
            return value
        raise PydanticCustomError(
            "batch_limit", "must be a number of batches (an integer >= 1) or a fraction in (0, 1]"
        )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights(cls, value):
        if value is None or value == "balanced":
            return value
        if isinstance(value, list) and value and all(_is_number(w) and w >= 0 for w in value) and any(value):
            return value
        raise PydanticCustomError(
            "class_weights", "must be 'balanced', null or a list of weights >= 0 (not all 0), one per class"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.lru_cache(maxsize=32)
def network_problem(name: str) -> str | None:
    """None when models.networks can build `name` (one of our OWN_NETWORKS, registered in timm's
    registry, or a timm architecture); else one line saying so, with the closest known name. Imports
    timm (and torch) when called, never when the stage is imported."""
    import difflib

    import timm

    from models.networks import OWN_NETWORKS  # importing it registers our own networks with timm

    if timm.is_model(name):
        return None
    near = difflib.get_close_matches(name.split(".", 1)[0], timm.list_models(), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else "see timm.list_models()"
    return f"unknown network: not {', '.join(OWN_NETWORKS)} or a timm architecture; {hint}"


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


def device_settings(params: Params) -> tuple[bool, str, bool]:
    """(on GPU, precision, channels_last) with "auto" resolved for this machine."""
    import torch

    gpu = params.accelerator in ("gpu", "cuda") or (params.accelerator == "auto" and torch.cuda.is_available())
    fast_bf16 = torch.cuda.is_bf16_supported() if gpu else cpu_has_fast_bf16()
    precision = params.precision
    if precision == "auto":
        precision = "bf16-mixed" if fast_bf16 else "32-true"
    # channels_last: oneDNN's and cuDNN's convolutions run faster in NHWC on every machine measured, in fp32
    # too (BENCHMARKS.md "Training precision on the CPU")
    channels_last = True if params.channels_last == "auto" else params.channels_last
    return gpu, precision, channels_last


def resolved_for_data(params: Params, gpu: bool, train_rows: int) -> Params:
    """params with batch_size "auto" resolved for this device and this many training rows (each of the
    processes gets its share): CPU_BATCH on CPU; on GPU the largest of GPU_BATCHES that still gives
    every process MIN_STEPS_PER_EPOCH steps an epoch, else CPU_BATCH. lr is the peak learning rate at
    CPU_BATCH and is scaled by sqrt(batch / CPU_BATCH) (on the H200, Fashion-MNIST at 512 with lr
    0.006 scored 0.9490 against 0.9502 at lr 0.008, seed 0). A batch size given as a number is used as it is, lr too."""
    if params.batch_size != "auto":
        return params
    batch = CPU_BATCH
    if gpu:
        share = train_rows / process_count(params, gpu)
        batch = next((b for b in GPU_BATCHES if share / b >= MIN_STEPS_PER_EPOCH), CPU_BATCH)
    return params.model_copy(update={"batch_size": batch, "lr": params.lr * math.sqrt(batch / CPU_BATCH)})


def loader_workers(params: Params, gpu: bool) -> int:
    """num_workers with "auto" resolved for this machine: CPU_WORKERS on CPU; on a GPU the usable cores
    shared among this node's training processes, one core each left for the process itself, at least
    CPU_WORKERS and at most GPU_MAX_WORKERS."""
    if params.num_workers != "auto":
        return params.num_workers
    if not gpu:
        return CPU_WORKERS
    from tasks.common.engine import usable_cpus

    per_process = usable_cpus() // max(1, process_count(params, gpu) // params.num_nodes)
    return max(CPU_WORKERS, min(GPU_MAX_WORKERS, per_process - 1))


def prepared_data(params: Params, prepared: Path, gpu: bool):
    """(params with num_workers (loader_workers) and batch_size (resolved_for_data) resolved, the
    PreparedDataModule with them)."""
    from models.data import PreparedDataModule

    params = params.model_copy(update={"num_workers": loader_workers(params, gpu)})
    data = PreparedDataModule(prepared, CPU_BATCH, params.num_workers, params.seed, pin_memory=gpu)
    params = resolved_for_data(params, gpu, len(data.train_index))
    data.batch_size = params.batch_size
    return params, data


def cpu_has_fast_bf16() -> bool:
    """True on CPUs whose oneDNN convolutions run bf16 in hardware: AMX tiles (Intel Sapphire Rapids and
    later) or AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake). One training step of the built-in
    networks in bf16-mixed + channels_last against 32-true: 2.2-2.8x on this project's 2-core Xeon (AMX),
    1.8-2.4x on its 2-core EPYC (Zen 5, AVX512-BF16), BENCHMARKS.md. Elsewhere bf16 is emulated: no faster."""
    return cpu_feature("_is_amx_tile_supported") or cpu_feature("_is_avx512_bf16_supported")


def cpu_feature(probe: str) -> bool:
    """One of torch.cpu's feature probes. They are private, so they may move: then False (stay in fp32)."""
    import torch

    return bool(getattr(torch.cpu, probe, lambda: False)())


def launch_rank() -> int:
    """0 in the process that must do every write (the global rank 0), else a nonzero number, read from
    what the launcher set before Lightning runs: torchrun's RANK, then LOCAL_RANK (Lightning's own
    launcher starts local ranks 1..N-1 with it; the process that started them is local rank 0), then
    srun's SLURM_PROCID, then NODE_RANK (Lightning's launcher on the other nodes). 0 when alone."""
    env = os.environ
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        value = env.get(key, "").strip()
        if value.isdigit() and int(value):
            return int(value)
        if value.isdigit() and key == "RANK":
            return 0  # torchrun names the global rank itself: nothing below can overrule it
    return 0


def process_count(params: Params, gpu: bool) -> int:
    """How many training processes these params ask for: devices per node (Lightning's "auto": every
    GPU, one process on CPU/MPS) times num_nodes."""
    if params.devices != "auto":
        per_node = params.devices
    elif gpu:
        import torch

        per_node = max(1, torch.cuda.device_count())
    else:
        per_node = 1
    return per_node * params.num_nodes


def strategy_for(params: Params, gpu: bool):
    """The Trainer's strategy: "auto" for one process; otherwise DDP, with find_unused_parameters when
    the backbone starts frozen (its parameters get no gradients then, which plain DDP refuses)."""
    if params.strategy == "auto" and process_count(params, gpu) == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=params.freeze_backbone_epochs > 0)


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

    from models.callbacks import FitScheduleToTime, FreezeBackbone

    best = ModelCheckpoint(
        dirpath=train_dir,
        filename="best",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # two writers of last.ckpt: every N steps (a kill mid-epoch loses little) and every epoch end
    step_last = ModelCheckpoint(
        dirpath=train_dir,
        filename="last",
        every_n_train_steps=params.checkpoint_every_n_steps,
        save_top_k=1,
        enable_version_counter=False,
    )
    epoch_last = ModelCheckpoint(
        dirpath=train_dir, filename="last", every_n_epochs=1, save_top_k=1, enable_version_counter=False
    )
    callbacks = [best, step_last, epoch_last, LearningRateMonitor(logging_interval="epoch")]
    if params.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=params.early_stopping_patience))
    if params.freeze_backbone_epochs:
        callbacks.append(FreezeBackbone(params.freeze_backbone_epochs))
    if params.max_time_minutes and params.fit_schedule_to_time and params.scheduler != "none":
        callbacks.append(FitScheduleToTime())
    return best, callbacks


def run_exists(run_id: str | None) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return bool(run_id) and mlflow.MlflowClient().get_run(run_id) is not None
    except MlflowException:
        return False


def experiment_id_for(name: str) -> str:
    """The experiment's id, created when missing (tracking.experiment_id: artifacts under the project,
    the kind tag that opens MLflow's UI on the runs, no process-wide state)."""
    return tracking.experiment_id(name)


def log_dataset(paths: Paths, version: str) -> None:
    """The split manifest as the run's input dataset (MLflow's Dataset column and lineage): its
    (image_id, label, split) rows, digest = dataset_version (shortened to the 12 characters the flow
    also shows; MLflow keeps at most 36, the full value is the run's dataset_version tag), source = the
    manifest file. A resumed run logs the same dataset again, which MLflow records once."""
    import mlflow
    import mlflow.data

    from tasks.common.manifest import read_manifest

    manifest = read_manifest(paths.split, "split")[["image_id", "label", "split"]].astype(str)
    with warnings.catch_warnings():
        # MLflow registers its local-file source class twice (for "" and "file:" paths) and warns that a
        # path could be either; both are the same class, so its choice is right
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(
            manifest, source=Path(paths.split).resolve().as_uri(), name="split", digest=version[:DATASET_DIGEST_CHARS]
        )
    mlflow.log_input(dataset, context="training", tags={"dataset_version": version})


def resume_point(train_dir: Path, config_hash: str) -> str | None:
    """The MLflow run to continue from last.ckpt (a run of the same configuration killed before it
    completed), or None to start a fresh run. Starting fresh deletes the checkpoints left in train_dir:
    those of another configuration (or of a finished run) must not be resumed or exported."""
    state, last = run_records.read_resume(train_dir), train_dir / LAST_CKPT
    if (
        last.is_file()
        and not state.get("completed", True)
        and state.get("fingerprint") == config_hash
        and run_exists(state.get("run_id"))
    ):
        log.info("resuming MLflow run %s from %s", state["run_id"], last)
        return state["run_id"]
    for stale in (LAST_CKPT, BEST_CKPT):
        (train_dir / stale).unlink(missing_ok=True)
    return None


def log_inputs(params: Params, paths: Paths, data, version: str, precision: str, channels_last: bool) -> None:
    """Tags, params and input files of the active MLflow run. Idempotent: a resumed run logs the same
    values again."""
    import mlflow

    prepared = Path(paths.prepared)
    mlflow.set_tags({"git_commit": git_commit(), "dataset_version": version, "stage": "train"})
    log_dataset(paths, version)
    values = flatten("train", params.model_dump()) | {
        "data.num_classes": str(len(data.classes)),
        "data.train_rows": str(len(data.train_index)),
        "data.val_rows": str(len(data.val_index)),
        "data.image_size": str(data.stats["image_size"]),
        "data.channels": str(data.stats["channels"]),
        "resolved.precision": precision,
        "resolved.channels_last": str(channels_last),
    }
    # a resume may differ in the speed-only settings (num_workers "auto" on another machine, a new time
    # budget) and MLflow refuses to change a logged param: those keep the value first logged
    logged = mlflow.MlflowClient().get_run(mlflow.active_run().info.run_id).data.params
    speed_only = {f"train.{name}" for name in NOT_FINGERPRINTED}
    mlflow.log_params({k: v for k, v in values.items() if not (k in speed_only and k in logged)})
    for artifact in (
        prepared / prepared_store.TRAIN_SPEC,
        prepared / prepared_store.CLASSES,
        paths.report_dir("augment") / "preview.png",
    ):
        if artifact.is_file():
            mlflow.log_artifact(str(artifact))


def build_module(params: Params, data, channels_last: bool, fresh: bool, log_pretrained: bool = True) -> tuple:
    """(the LightningModule, tensor names pretrained_path did not cover). A resumed run (fresh=False)
    takes every weight from last.ckpt, so pretrained weights are loaded only into a fresh run; what was
    loaded is logged to the active MLflow run unless log_pretrained is off (ranks other than 0)."""
    import mlflow

    from models.module import ImageClassifier
    from models.networks import load_pretrained

    module = ImageClassifier(
        params.network,
        data.classes,
        data.stats,
        optimizer=params.optimizer,
        lr=params.lr,
        weight_decay=params.weight_decay,
        scheduler=params.scheduler,
        warmup_epochs=params.warmup_epochs,
        label_smoothing=params.label_smoothing,
        class_weights=loss_weights(params, data.class_counts()),
        channels_last=channels_last,
    )
    reinitialised: list[str] = []
    if params.pretrained_path and fresh:
        reinitialised = load_pretrained(module.network, params.pretrained_path)
        if log_pretrained:
            mlflow.log_dict(
                {"pretrained_path": params.pretrained_path, "reinitialised": reinitialised}, "pretrained.json"
            )
    return module, reinitialised


def silent_logger():
    """The logger of ranks other than 0: Lightning needs one (LearningRateMonitor refuses to run
    without), but only rank 0 writes to MLflow, and these ranks need not even reach its store."""
    from lightning.pytorch.loggers import Logger

    class RankLogger(Logger):
        name, version = "imgcls", None

        def log_metrics(self, metrics, step=None) -> None:
            pass

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

    return RankLogger()


def build_trainer(
    params: Params, train_dir: Path, precision: str, tracking_uri: str, run_id: str | None, gpu: bool = False
) -> tuple:
    """(the Lightning Trainer logging into MLflow run `run_id`, its best-checkpoint callback). run_id
    None: a rank other than 0, which logs nothing. A setting Lightning refuses (devices x num_nodes not
    what torchrun / srun started, an accelerator this machine lacks) is one UserError line."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.loggers import MLFlowLogger

    best, callbacks = make_callbacks(params, train_dir)
    logger = (
        MLFlowLogger(experiment_name=params.experiment, tracking_uri=tracking_uri, run_id=run_id)
        if run_id
        else silent_logger()
    )
    try:
        trainer = L.Trainer(
            max_epochs=params.epochs,
            accelerator=params.accelerator,
            devices=params.devices,
            strategy=strategy_for(params, gpu),
            num_nodes=params.num_nodes,
            precision=precision,
            deterministic=params.deterministic,
            callbacks=callbacks,
            default_root_dir=train_dir,
            logger=logger,
            max_time={"minutes": params.max_time_minutes} if params.max_time_minutes else None,
            limit_train_batches=params.limit_train_batches,
            limit_val_batches=params.limit_val_batches,
            log_every_n_steps=1,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        raise UserError(f"train: Lightning refuses these settings: {' '.join(str(exc).split())}") from None
    return trainer, best


def launched_externally(trainer) -> bool:
    """True when torchrun / srun (or Lightning's launcher, for its children) started the processes, so
    they all run at once; False when this process will start the others itself (trainer.fit)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return environment is not None and environment.creates_processes_externally


def share_plan(trainer, plan: dict):
    """Rank 0: give `plan` (run id, resume or not) to the other ranks. Returns a context manager to
    hold around trainer.fit: it sets PLAN_ENV for the children Lightning's launcher starts there (and
    takes it away after). Processes started by torchrun / srun are already running: they get the plan
    by broadcast, over the process group Lightning then reuses."""
    import contextlib

    if trainer.world_size <= 1:
        return contextlib.nullcontext()
    if launched_externally(trainer):
        trainer.strategy.setup_environment()  # the process group; fit finds it initialised and keeps it
        trainer.strategy.broadcast(plan, src=0)
        return contextlib.nullcontext()
    return _environment(PLAN_ENV, json.dumps(plan))


def check_launch(params: Params, gpu: bool) -> None:
    """Several processes need a launcher that runs this stage in each: torchrun, srun, or Lightning's
    own, which re-runs this process's command line once per extra device, so only works from `python
    -m tasks.train` (from pytest, the flow or a search it would start those again). And torchrun /
    srun must have started as many as the params ask for. Checked before anything is written."""
    import __main__

    processes = process_count(params, gpu)
    started = os.environ.get("WORLD_SIZE") if "RANK" in os.environ else os.environ.get("SLURM_NTASKS")
    if started and started.isdigit() and int(started) > 1 and int(started) != processes:
        launcher = "torchrun" if "RANK" in os.environ else "srun"
        raise UserError(
            f"train.devices x train.num_nodes = {processes} processes, but {launcher} started {started}: "
            "make them agree (devices = processes per node, num_nodes = nodes)"
        )
    if processes <= 1 or {"RANK", "LOCAL_RANK"} & set(os.environ) or os.environ.get("SLURM_NTASKS", "1") != "1":
        return
    if getattr(__main__.__spec__, "name", None) != "tasks.train":
        raise UserError(
            f"train.devices x train.num_nodes = {processes} processes: start them with `python -m "
            "tasks.train`, torchrun or srun (docs/scaling.md), or set train.devices: 1 to train in this process"
        )


def receive_plan(trainer) -> dict:
    """A rank other than 0: rank 0's plan, from PLAN_ENV (Lightning's launcher started us) or its broadcast."""
    if os.environ.get(PLAN_ENV):
        return json.loads(os.environ[PLAN_ENV])
    trainer.strategy.setup_environment()
    return trainer.strategy.broadcast(None, src=0)


def _environment(name: str, value: str):
    import contextlib

    @contextlib.contextmanager
    def scope():
        before = os.environ.get(name)
        os.environ[name] = value
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before

    return scope()


def fit(trainer, module, data, resume_from: Path | None) -> tuple[dict | None, float]:
    """Train, from `resume_from` (last.ckpt) when given. Returns (where it resumed: epoch and
    global_step, or None; seconds per epoch run here, from the start of training proper: process
    start-up, the process group and the sanity check are not an epoch's work)."""
    import torch

    from models.callbacks import FitClock

    resumed_from = None
    if resume_from is not None:
        checkpoint = torch.load(resume_from, map_location="cpu", weights_only=True)
        resumed_from = {"epoch": int(checkpoint["epoch"]), "global_step": int(checkpoint["global_step"])}
        log.info("resuming at epoch %d, step %d", *resumed_from.values())
    first_epoch = resumed_from["epoch"] if resumed_from else 0
    fit_started, clock = time.perf_counter(), FitClock()
    trainer.callbacks.append(clock)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        # resume.json and run.json live beside the checkpoints by design
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    epochs_run = max(1, trainer.current_epoch - first_epoch)
    return resumed_from, (time.perf_counter() - (clock.started or fit_started)) / epochs_run


def log_fitted_epochs(trainer) -> None:
    """The epochs the time budget left room for (FitScheduleToTime), as MLflow param resolved.epochs."""
    import mlflow

    from models.callbacks import FitScheduleToTime

    fitted = next((c.epochs for c in trainer.callbacks if isinstance(c, FitScheduleToTime)), None)
    if fitted is not None:
        mlflow.log_param("resolved.epochs", fitted)


def load_best(module, best) -> float:
    """Put the best checkpoint's weights into `module`; returns its val/acc (nan when none was saved)."""
    import torch

    if Path(best.best_model_path or "").is_file():
        checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
    return float(best.best_model_score) if best.best_model_score is not None else float("nan")


def calibrate(params: Params, module, data, prepared: Path) -> float | None:
    """Temperature scaling of the loaded best model: fit T on the val split's logits (as Predictor
    computes them, test-time flip included), put it in data.stats so export saves it with the model,
    and log T and the val ECE before/after to the active run. None when train.calibrate is off. The
    val ECE after is measured on the images T was fitted on; evaluate's test/ece is the honest figure."""
    if not params.calibrate:
        return None
    import mlflow
    import numpy as np

    from models.calibration import fit_temperature, probabilities
    from models.predictor import Predictor
    from tasks.judging.gates import ECE_BINS
    from tasks.judging.metrics import expected_calibration_error

    uncalibrated = {k: v for k, v in data.stats.items() if k != "temperature"}
    predictor = Predictor(module.network, data.classes, uncalibrated)
    images, rows = prepared_store.open_images(prepared), data.val_index["row"].to_numpy()
    logits = np.concatenate(
        [predictor.logits(np.asarray(images[rows[i : i + 4096]])) for i in range(0, len(rows), 4096)], axis=1
    )
    labels = data.val_index["label_idx"].to_numpy()
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(labels, probabilities(logits, 1.0), ECE_BINS)
    after = expected_calibration_error(labels, probabilities(logits, temperature), ECE_BINS)
    data.stats = uncalibrated | {"temperature": temperature}
    mlflow.log_metrics({"val/temperature": temperature, "val/ece_uncalibrated": before, "val/ece_calibrated": after})
    log.info("temperature %.4g fitted on %d val images: val ECE %.4f -> %.4f", temperature, len(labels), before, after)
    return temperature


def export_model(params: Params, module, data, prepared: Path, train_dir: Path) -> str:
    """The pyfunc: files written once, saved to train_dir/model and logged to the active run as "model".
    Returns the logged model's URI (models:/m-..., what registering it should name)."""
    from models.predictor import save_model_files
    from models.pyfunc import log_pyfunc, save_pyfunc

    example_image = prepared_store.open_images(prepared)[int(data.val_index["row"].iloc[0])]
    with tempfile.TemporaryDirectory() as tmp:
        files = save_model_files(tmp, params.network, module.network, data.classes, data.stats)
        with atomic_dir(train_dir / "model") as model_dir:
            save_pyfunc(model_dir, files, example_image)
        return log_pyfunc(files, example_image).model_uri


def run(params: Params, paths: Paths) -> dict | None:
    """Train and record the run; returns the summary (None in ranks other than 0, which only train)."""
    import lightning as L
    import mlflow

    prepared, train_dir = Path(paths.prepared), Path(paths.train_dir)
    gpu, precision, channels_last = device_settings(params)
    params, data = prepared_data(params, prepared, gpu)  # every rank resolves the same batch and lr
    check_launch(params, gpu)
    if launch_rank() != 0:
        return run_other_rank(params, data, train_dir, gpu, precision, channels_last)
    version = dataset_version(paths)
    config_hash = fingerprint(params, version, prepared)
    uri = tracking.use()
    resume_id = resume_point(train_dir, config_hash)
    experiment_id = experiment_id_for(params.experiment)
    L.seed_everything(params.seed, workers=True, verbose=False)
    started = time.perf_counter()

    with mlflow.start_run(
        run_id=resume_id, experiment_id=experiment_id, run_name=None if resume_id else f"train-{params.network}"
    ) as active:
        run_id = active.info.run_id
        run_records.write_resume(
            train_dir, run_id=run_id, experiment_id=experiment_id, fingerprint=config_hash, completed=False
        )
        log_inputs(params, paths, data, version, precision, channels_last)
        module, reinitialised = build_module(params, data, channels_last, fresh=resume_id is None)
        trainer, best = build_trainer(params, train_dir, precision, uri, run_id, gpu)
        with share_plan(trainer, {"run_id": run_id, "resume": resume_id is not None}):
            resumed_from, seconds_per_epoch = fit(trainer, module, data, train_dir / LAST_CKPT if resume_id else None)
        best_acc = load_best(module, best)
        log_fitted_epochs(trainer)
        calibrate(params, module, data, prepared)
        mlflow.log_metrics(
            {
                "val/best_acc": best_acc,
                "train/seconds_per_epoch": seconds_per_epoch,
                "train/epochs": float(trainer.current_epoch),
            }
        )
        model_uri = export_model(params, module, data, prepared, train_dir)
        # every trained model ends up registered, or its run says why not: promote updates this
        mlflow.set_tags(run_records.pending_registration_tags())

    info = run_records.write_run(
        train_dir,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        dataset_version=version,
        model_uri=model_uri,
    )
    run_records.write_resume(
        train_dir, run_id=run_id, experiment_id=experiment_id, fingerprint=config_hash, completed=True
    )
    return info | {
        "epochs": trainer.current_epoch,
        "resumed_from": resumed_from,
        "best_val_acc": best_acc,
        "seconds_per_epoch": round(seconds_per_epoch, 3),
        "seconds": round(time.perf_counter() - started, 1),
        "precision": precision,
        "reinitialised": reinitialised,
        "processes": trainer.world_size,
    }


def run_other_rank(params: Params, data, train_dir: Path, gpu: bool, precision: str, channels_last: bool) -> None:
    """A rank other than 0: train in step with rank 0 (same seed, same resume point) and write nothing;
    Lightning saves checkpoints from rank 0 and the silent logger drops this rank's metrics."""
    import lightning as L

    L.seed_everything(params.seed, workers=True, verbose=False)
    trainer, _ = build_trainer(params, train_dir, precision, "", None, gpu)
    plan = receive_plan(trainer)
    module, _ = build_module(params, data, channels_last, fresh=not plan["resume"], log_pretrained=False)
    fit(trainer, module, data, train_dir / LAST_CKPT if plan["resume"] else None)
    return None


def other_rank_main(argv: list[str] | None) -> int:
    """`python -m tasks.train` in a rank other than 0: rank 0 holds the workspace lock and writes every
    output, so this one only loads the params and trains (no lock, no summary)."""
    import argparse

    from tasks.common.params import DEFAULT_PARAMS, ParamsError, load_stage

    parser = argparse.ArgumentParser(prog="python -m tasks.train")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[train rank {launch_rank()}] %(message)s")
    try:
        run(*load_stage("train", args.params))
    except (ParamsError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    if launch_rank() != 0:
        return other_rank_main(argv)
    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
