"""The train stage end to end on CPU: it learns, records itself in MLflow, exports a predictor, starts
from a local safetensors file, and a run killed mid-epoch resumes in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from models.networks import build_network
from models.predictor import load_predictor
from tasks.common import run_records
from tasks.common.errors import UserError
from tasks.train import (
    Params,
    cpu_has_fast_bf16,
    device_settings,
    loader_workers,
    log_inputs,
    loss_weights,
    make_callbacks,
    prepared_data,
    resolved_for_data,
    resume_point,
    run,
)
from tests.helpers.prepared_store import make_project

ROOT = Path(__file__).resolve().parents[2]
# fp32, contiguous: the same numbers on every CPU (auto picks bf16 on CPUs with AMX; tested on its own below)
FAST = dict(
    epochs=2,
    batch_size=8,
    lr=0.01,
    num_workers=0,
    checkpoint_every_n_steps=3,
    early_stopping_patience=None,
    precision="32-true",
    channels_last=False,
)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_defaults_match_params_yaml():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    assert Params.model_validate(section) == Params()
    assert set(section) == set(Params.model_fields)


def test_bf16_mixed_channels_last_training_learns_on_the_cpu(tmp_path, tracking):
    """What `precision: auto` picks on CPUs with AMX; elsewhere autocast emulates bf16, slower but the same."""
    paths = make_project(tmp_path, per_split={"train": 48, "val": 12, "test": 6})
    fast = FAST | {"epochs": 4, "precision": "bf16-mixed", "channels_last": True}
    summary = run(Params(**fast, accelerator="cpu"), paths)
    assert summary["precision"] == "bf16-mixed"
    run_params = mlflow.get_run(summary["run_id"]).data.params
    assert run_params["resolved.precision"] == "bf16-mixed" and run_params["resolved.channels_last"] == "True"
    assert summary["best_val_acc"] > 0.5  # three classes: chance is 1/3


def test_training_learns_and_records_the_run(tmp_path, tracking):
    paths = make_project(tmp_path)
    # a budget both epochs fit in: the schedule is left as it is and the run records the decision
    summary = run(Params(**FAST, max_time_minutes=30), paths)

    train_dir = Path(paths.train_dir)
    info = json.loads((train_dir / "run.json").read_text())
    assert info["run_id"] == summary["run_id"] and info["model_uri"].startswith("models:/m-")
    assert info["tracking_uri"] == tracking and len(info["dataset_version"]) == 64
    assert {"last.ckpt", "best.ckpt", "model"} <= {p.name for p in train_dir.iterdir()}
    assert summary["best_val_acc"] > 0.5  # three classes: chance is 1/3

    client = mlflow.MlflowClient(tracking)
    record = client.get_run(info["run_id"])
    assert record.info.status == "FINISHED"
    assert record.data.tags["stage"] == "train" and record.data.tags["dataset_version"] == info["dataset_version"]
    assert record.data.tags["git_commit"]
    # not registered until promote says otherwise, and the run says so
    assert record.data.tags["imgcls.registered"] == "false"
    assert record.data.tags["imgcls.not_registered_reason"] == "promote has not run on this model yet"
    assert record.data.params["train.network"] == "resnet_small" and record.data.params["train.lr"] == "0.01"
    assert record.data.params["resolved.epochs"] == "2"
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/macro_f1"):
        assert len(client.get_metric_history(info["run_id"], name)) == 2, name
    logged = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"augment.json", "classes.json"} <= logged

    # the exported model and the best checkpoint predict the same, and better than chance
    import pandas as pd

    from tests.helpers.prepared_store import BRIGHTNESS_CLASSES as CLASSES

    index = pd.read_parquet(Path(paths.prepared) / "index.parquet")
    test = index[index["split"] == "test"]
    images = np.load(Path(paths.prepared) / "images.npy")[test["row"].to_numpy()]
    exported = load_predictor(train_dir)
    assert exported.classes == CLASSES
    proba = exported.predict_proba(images)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert (proba.argmax(axis=1) == test["label_idx"].to_numpy()).mean() > 0.5
    # the checkpoint holds the weights; the exported model adds the temperature fitted after training
    checkpoint = load_predictor(train_dir / "best.ckpt")
    checkpoint.stats["temperature"] = exported.temperature
    assert np.allclose(checkpoint.predict_proba(images), proba, atol=1e-5)


def test_transfer_from_safetensors_to_another_class_count(tmp_path, tracking):
    paths = make_project(tmp_path, per_split={"train": 8, "val": 3, "test": 1}, channels=3)
    source = build_network("resnet_small", num_classes=10, in_chans=3)
    weights = tmp_path / "imagenet-ish.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))

    summary = run(Params(**FAST | {"epochs": 1, "pretrained_path": str(weights), "freeze_backbone_epochs": 1}), paths)
    assert summary["reinitialised"] == ["fc.bias", "fc.weight"]
    trained = load_predictor(paths.train_dir).network.state_dict()
    # the backbone was frozen for the only epoch: its convolutions are the source's, the head is new
    assert torch.equal(trained["stem.0.weight"], source.state_dict()["stem.0.weight"])
    assert torch.equal(trained["stages.5.conv2.weight"], source.state_dict()["stages.5.conv2.weight"])
    assert trained["fc.weight"].shape == (3, source.num_features)
    client = mlflow.MlflowClient(tracking)
    assert "pretrained.json" in {a.path for a in client.list_artifacts(summary["run_id"])}


def test_only_an_unfinished_run_of_the_same_configuration_is_resumed(tmp_path, tracking):
    with mlflow.start_run() as unfinished:
        pass

    def leave(completed: bool, fingerprint: str = "f", run_id: str = unfinished.info.run_id) -> None:
        for name in ("last.ckpt", "best.ckpt"):
            (tmp_path / name).write_bytes(b"checkpoint")
        run_records.write_resume(
            tmp_path, run_id=run_id, experiment_id="0", fingerprint=fingerprint, completed=completed
        )

    leave(completed=False)
    assert resume_point(tmp_path, "f") == unfinished.info.run_id and (tmp_path / "last.ckpt").is_file()
    for other in (dict(completed=True), dict(completed=False, fingerprint="g"), dict(completed=False, run_id="gone")):
        leave(**other)
        assert resume_point(tmp_path, "f") is None, other
        # checkpoints of another configuration or run are never resumed or exported
        assert not (tmp_path / "last.ckpt").exists() and not (tmp_path / "best.ckpt").exists()


def test_missing_prepared_store_is_one_clear_error(tmp_path, tracking):
    paths = make_project(tmp_path)
    (Path(paths.prepared) / "augment.json").unlink()
    with pytest.raises(UserError, match="missing augment.json: run the `augment` stage first"):
        run(Params(**FAST), paths)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("\n{\n") + 1 :])


@pytest.mark.slow
def test_killed_run_resumes_in_the_same_mlflow_run(tmp_path, tracking):
    paths = make_project(tmp_path, per_split={"train": 40, "val": 4, "test": 1})
    steps_per_epoch = 120 // 4  # 3 classes x 40 train images (+1 balance copy, dropped as the last partial batch)
    train = FAST | {"epochs": 3, "batch_size": 4, "checkpoint_every_n_steps": 5}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"paths": paths.model_dump(), "train": train}))
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tasks.train", "--params", str(params_file)]
    last = Path(paths.train_dir) / "last.ckpt"

    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "training ended before it could be killed"
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["global_step"] < 3 * steps_per_epoch
    run_id = json.loads((Path(paths.train_dir) / "resume.json").read_text())["run_id"]

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = _last_json(second.stdout)
    assert summary["run_id"] == run_id
    assert summary["resumed_from"] == {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}
    assert summary["epochs"] == 3
    client = mlflow.MlflowClient(tracking)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert len(client.get_metric_history(run_id, "val/acc")) == 3  # each epoch once, none repeated

    # a finished run is not resumed: running again starts a new MLflow run
    third = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert _last_json(third.stdout)["run_id"] != run_id and _last_json(third.stdout)["resumed_from"] is None


def test_balanced_class_weights_and_cpu_resolution():
    counts = np.array([30, 10, 0])
    assert loss_weights(Params(class_weights="balanced"), counts) == pytest.approx([40 / 90, 40 / 30, 40 / 3])
    assert loss_weights(Params(), counts) is None
    with pytest.raises(UserError, match="2 values for 3 classes"):
        loss_weights(Params(class_weights=[1.0, 2.0]), counts)
    fast_bf16 = cpu_has_fast_bf16()  # bf16 only where the CPU runs it in hardware (AMX or AVX512-BF16)
    assert device_settings(Params(accelerator="cpu")) == (False, "bf16-mixed" if fast_bf16 else "32-true", True)
    assert device_settings(Params(accelerator="cpu", precision="32-true", channels_last=False)) == (
        False,
        "32-true",
        False,
    )


@pytest.mark.parametrize(
    "gpu, settings, rows, batch",
    [
        (False, {}, 54_000, 128),  # CPU: 128 whatever the data
        (True, {}, 54_000, 512),  # Fashion-MNIST's train split: 105 steps an epoch at 512
        (True, {}, 30_000, 256),  # 58 steps at 512 would be too few; 117 at 256
        (True, {}, 1_437, 128),  # digits: too small for a larger batch
        (True, {"devices": 2}, 54_000, 256),  # each of 2 processes gets 27,000 rows
        (True, {"batch_size": 64}, 54_000, 64),  # a number is used as it is, lr too
    ],
)
def test_an_auto_batch_fills_a_gpu_only_where_the_data_gives_enough_steps(gpu, settings, rows, batch):
    params = Params(lr=0.003, **settings)
    resolved = resolved_for_data(params, gpu, rows)
    assert resolved.batch_size == batch
    scaled = params.batch_size == "auto"
    assert resolved.lr == pytest.approx(0.003 * (batch / 128) ** 0.5 if scaled else 0.003)
    assert resolved.model_dump(exclude={"batch_size", "lr"}) == params.model_dump(exclude={"batch_size", "lr"})


def test_the_data_module_takes_the_resolved_batch_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    paths = make_project(tmp_path)
    params, data = prepared_data(Params(), Path(paths.prepared), gpu=True)  # a small store: 128 even on a GPU
    assert params.batch_size == data.batch_size == 128 and params.lr == Params().lr
    assert params.num_workers == data.num_workers == 12


@pytest.mark.parametrize(
    "gpu, cores, settings, workers",
    [
        (False, 16, {}, 2),  # CPU: 2 whatever the cores
        (True, 16, {}, 12),  # the H200 host: 15 cores to spare, at most 12
        (True, 16, {"devices": 2}, 7),  # two processes share the node's 16 cores
        (True, 16, {"devices": 2, "num_nodes": 2}, 7),  # per node: the other node has its own cores
        (True, 4, {}, 3),
        (True, 2, {}, 2),  # never fewer than on a CPU
        (True, 16, {"num_workers": 0}, 0),  # a number is used as it is
    ],
)
def test_auto_workers_use_a_gpu_hosts_cores(gpu, cores, settings, workers, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert loader_workers(Params(**settings), gpu) == workers


def test_a_resume_keeps_the_speed_only_params_it_first_logged(tmp_path, tracking):
    # num_workers "auto" resolves per machine, and MLflow refuses to change a logged param
    paths = make_project(tmp_path)
    first, data = prepared_data(Params(num_workers=2), Path(paths.prepared), gpu=False)
    with mlflow.start_run() as active:
        log_inputs(first, paths, data, "v1", "32-true", False)
        log_inputs(
            first.model_copy(update={"num_workers": 12, "max_time_minutes": 5.0}), paths, data, "v1", "32-true", False
        )
        with pytest.raises(mlflow.exceptions.MlflowException):  # a setting that changes the model is not allowed
            log_inputs(first.model_copy(update={"lr": 0.5}), paths, data, "v1", "32-true", False)
    logged = mlflow.MlflowClient().get_run(active.info.run_id).data.params
    assert logged["train.num_workers"] == "2" and logged["train.max_time_minutes"] == "None"


@pytest.mark.parametrize(
    "settings, fitted",
    [
        ({"max_time_minutes": 15.0}, True),
        ({"max_time_minutes": 15.0, "fit_schedule_to_time": False}, False),
        ({"max_time_minutes": 15.0, "scheduler": "none"}, False),  # no schedule to end: the plain cut
        ({}, False),  # no budget
    ],
)
def test_a_time_budget_ends_the_schedule_with_it_unless_turned_off(tmp_path, settings, fitted):
    from models.callbacks import FitScheduleToTime

    _, callbacks = make_callbacks(Params(**settings), tmp_path)
    assert any(isinstance(c, FitScheduleToTime) for c in callbacks) == fitted
