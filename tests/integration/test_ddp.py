"""The train stage in two CPU processes (DDP over gloo; `python -m tasks.train` starts rank 1 through
Lightning's launcher): one MLflow run with its params, metrics, artifacts and model recorded once, one
run.json, the data shared out between the ranks; a result comparable to one process's (slow); a run that
asks for two processes from inside another program is refused before it writes anything; and a DDP run
killed mid-training resumes in the same MLflow run (slow)."""

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
import pandas as pd
import pytest
import torch
import yaml

from models.predictor import load_predictor
from tasks.common.errors import UserError
from tasks.train import Params, run
from tests.helpers.prepared_store import make_project

ROOT = Path(__file__).resolve().parents[2]
# 3 classes x 16 train images + 1 balance copy = 49 rows: 6 batches of 8 in one process, 3 per rank in two
TRAIN = dict(
    network="resnet_tiny",
    epochs=2,
    batch_size=8,
    lr=0.01,
    num_workers=0,
    checkpoint_every_n_steps=3,
    early_stopping_patience=None,
    accelerator="cpu",
)
DDP = TRAIN | {"devices": 2, "strategy": "ddp", "experiment": "ddp"}


def _params_file(tmp_path: Path, paths, train: dict) -> Path:
    params_file = tmp_path / f"params-{train.get('experiment', 'imgcls')}.yaml"
    params_file.write_text(yaml.safe_dump({"paths": paths.model_dump(), "train": train}))
    return params_file


def _command(params_file: Path) -> list[str]:
    return [sys.executable, "-m", "tasks.train", "--params", str(params_file)]


def _env(tracking_uri: str) -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri}


def _last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("\n{\n") + 1 :])


def _train_two_processes(tmp_path: Path, paths, train: dict, tracking_uri: str) -> dict:
    done = subprocess.run(
        _command(_params_file(tmp_path, paths, train)),
        cwd=tmp_path,
        env=_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("\n{\n") == 1, "only rank 0 prints a summary"
    return _last_json(done.stdout)


def _test_accuracy(paths, train_dir: Path) -> float:
    index = pd.read_parquet(Path(paths.prepared) / "index.parquet")
    test = index[index["split"] == "test"]
    images = np.load(Path(paths.prepared) / "images.npy")[test["row"].to_numpy()]
    proba = load_predictor(train_dir).predict_proba(images)
    return float((proba.argmax(axis=1) == test["label_idx"].to_numpy()).mean())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One two-process training on a tiny project (its own MLflow store): (paths, summary, tracking URI)."""
    root = tmp_path_factory.mktemp("ddp")
    uri = f"sqlite:///{root}/mlflow.db"
    paths = make_project(root)
    return paths, _train_two_processes(root, paths, DDP, uri), uri


def test_two_processes_record_one_run(ddp_run):
    paths, summary, uri = ddp_run
    train_dir = Path(paths.train_dir)

    assert summary["processes"] == 2 and summary["epochs"] == 2
    info = json.loads((train_dir / "run.json").read_text())
    assert info["run_id"] == summary["run_id"] and info["model_uri"] == summary["model_uri"]
    assert json.loads((train_dir / "resume.json").read_text())["completed"] is True
    assert {"last.ckpt", "best.ckpt", "model", "run.json", "resume.json"} <= {p.name for p in train_dir.iterdir()}
    # the ranks shared out each epoch: 3 of the 6 batches of 8 each, so 3 optimizer steps an epoch
    assert torch.load(train_dir / "last.ckpt", weights_only=True)["global_step"] == 2 * 3

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("ddp").experiment_id
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [info["run_id"]], "one MLflow run, whatever the number of processes"
    record = runs[0]
    assert record.info.status == "FINISHED"
    assert record.data.params["train.devices"] == "2" and record.data.params["train.strategy"] == "ddp"
    assert record.data.params["train.num_nodes"] == "1"
    assert record.data.tags["stage"] == "train" and record.data.tags["imgcls.registered"] == "false"
    # each epoch's figures once (rank 1 logs nothing of its own)
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/macro_f1"):
        history = client.get_metric_history(info["run_id"], name)
        assert len(history) == 2 and len({m.step for m in history}) == 2, name
    assert "val/temperature" in record.data.metrics and record.data.metrics["val/best_acc"] > 0.5
    assert {"augment.json", "classes.json"} <= {a.path for a in client.list_artifacts(info["run_id"])}
    assert len(client.search_logged_models(experiment_ids=[experiment])) == 1, "one exported model"
    assert _test_accuracy(paths, train_dir) > 0.5  # three classes: chance is 1/3


@pytest.mark.slow
def test_one_process_gives_a_comparable_result(ddp_run, tmp_path, tracking):
    paths, summary, _ = ddp_run
    single_paths = paths.model_copy(update={"train_dir": str(tmp_path / "train-single")})
    single = run(Params(**TRAIN | {"devices": 1}), single_paths)
    assert single["processes"] == 1
    # one process takes every batch of an epoch itself: twice the optimizer steps
    assert torch.load(Path(single_paths.train_dir) / "last.ckpt", weights_only=True)["global_step"] == 2 * 6
    ddp_accuracy = _test_accuracy(paths, Path(paths.train_dir))
    single_accuracy = _test_accuracy(single_paths, Path(single_paths.train_dir))
    assert ddp_accuracy > 0.5 and single_accuracy > 0.5
    assert abs(ddp_accuracy - single_accuracy) <= 0.34, (ddp_accuracy, single_accuracy)
    assert abs(summary["best_val_acc"] - single["best_val_acc"]) <= 0.34


def test_several_processes_from_inside_another_program_are_refused_before_any_write(tmp_path, tracking):
    paths = make_project(tmp_path)
    # Lightning's launcher would re-run pytest's own command line for rank 1
    with pytest.raises(UserError, match=r"2 processes: start them with `python -m tasks.train`, torchrun or srun"):
        run(Params(**DDP), paths)
    assert not Path(paths.train_dir).exists() or not any(Path(paths.train_dir).iterdir())
    assert mlflow.MlflowClient(tracking).get_experiment_by_name("ddp") is None


@pytest.mark.slow
def test_killed_ddp_run_resumes_in_the_same_mlflow_run(tmp_path, tracking):
    paths = make_project(tmp_path, per_split={"train": 40, "val": 4, "test": 1})
    # 121 train rows: 61 per rank, 15 batches of 4 an epoch
    train = DDP | {"epochs": 3, "batch_size": 4, "checkpoint_every_n_steps": 5}
    params_file = _params_file(tmp_path, paths, train)
    last = Path(paths.train_dir) / "last.ckpt"

    # both ranks in one session, killed together (a lone rank would wait for its peer)
    first = subprocess.Popen(
        _command(params_file),
        cwd=tmp_path,
        env=_env(tracking),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "training ended before it could be killed"
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["global_step"] < 3 * 15
    run_id = json.loads((Path(paths.train_dir) / "resume.json").read_text())["run_id"]

    summary = _train_two_processes(tmp_path, paths, train, tracking)
    assert summary["run_id"] == run_id and summary["processes"] == 2
    assert summary["resumed_from"] == {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"]}
    assert torch.load(last, weights_only=True)["global_step"] == 3 * 15  # both ranks went on to the end
    client = mlflow.MlflowClient(tracking)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert len(client.get_metric_history(run_id, "val/acc")) == 3  # each epoch once, none repeated


@pytest.mark.slow  # the same two-process training as the fixture's, started through the flow's helper
def test_the_flow_runs_several_processes_as_python_m_tasks_train(tmp_path, tracking, monkeypatch):
    """`imgcls run` on a machine with several devices: the flow's train task starts `python -m tasks.train`
    (whose launcher starts the other ranks) instead of training in the flow's own process."""
    from flows.pipeline import train_in_own_processes, training_processes

    assert training_processes(Params(**DDP)) == 2 and training_processes(Params(**TRAIN)) == 1
    paths = make_project(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    info = train_in_own_processes(str(_params_file(tmp_path, paths, DDP)), paths)

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["train.devices"] == "2"
    assert info["model_uri"] and (Path(paths.train_dir) / "model").is_dir()
