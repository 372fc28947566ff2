"""`imgcls tune`: a real Optuna study of tiny trials (resnet_tiny, one epoch, two batches) on a small
prepared store, recorded in a real MLflow sqlite store: trials are child runs of one parent, the study
lives beside the MLflow store and resumes, pruned trials are recorded as pruned, the best configuration is
a params file train accepts and `imgcls run --params-override` merges, and the registry is untouched."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from flows.cli import build_parser, main
from flows.tune import tune
from tasks.common.errors import UserError
from tasks.common.params import ParamsError, load_stage, merge_override
from tasks.train import Params as TrainParams
from tasks.tuning.best import dvc_command
from tasks.tuning.objective import KIND_TAG, PARENT_TAG, STATE_TAG
from tasks.tuning.space import TuneParams
from tasks.tuning.study import STUDY_FILE, storage_url
from tests.helpers.prepared_store import make_project

ROOT = Path(__file__).resolve().parents[2]
TRAIN = dict(
    network="resnet_tiny",
    batch_size=4,
    num_workers=0,
    early_stopping_patience=None,
    limit_train_batches=1,
    limit_val_batches=1,
    checkpoint_every_n_steps=100,
)
SPACE = {"lr": {"low": 0.001, "high": 0.05, "log": True}, "label_smoothing": {"low": 0.0, "high": 0.2}}
TUNE = dict(study_name="tiny", n_trials=3, epochs_per_trial=1, pruner="none", space=SPACE)


@pytest.fixture
def tune_project(tmp_path, monkeypatch, tracking):
    """A project folder (the working directory) with a prepared store, a params.yaml writer and the
    MLflow sqlite store of the `tracking` fixture (tmp_path/mlflow.db)."""
    monkeypatch.chdir(tmp_path)
    paths = make_project(tmp_path / "data")
    paths_section = {k: v for k, v in paths.model_dump().items() if k in ("prepared", "split", "train_dir", "reports")}

    def write(**tune_settings) -> Path:
        params = {"paths": paths_section, "train": TRAIN, "tune": {**TUNE, **tune_settings}}
        target = tmp_path / "params.yaml"
        target.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        return target

    return tmp_path, write


def _runs(kind: str) -> list:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("imgcls-tune")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'")


def test_params_yaml_tune_section_is_the_pydantic_defaults():
    section = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["tune"]
    assert TuneParams.model_validate(section) == TuneParams()
    assert set(section) == set(TuneParams.model_fields)


def test_study_of_child_runs_resumes_and_its_best_params_apply(tune_project):
    root, write = tune_project
    params_path = write()
    summary = tune(params_path)
    assert summary["trials"] == 3 and summary["by_state"] == {"complete": 3} and summary["new_trials"] == 3

    # the study is an sqlite file beside the MLflow store
    assert (root / STUDY_FILE).is_file() and (root / "mlflow.db").is_file()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / STUDY_FILE}")
    assert len(study.trials) == 3 and study.best_value == summary["best_value"]

    # one parent run, every trial a finished child run of it with the epoch's metrics
    (parent,) = _runs("tune")
    assert parent.info.run_id == summary["mlflow_parent_run_id"] and parent.info.status == "FINISHED"
    assert parent.data.metrics["tune/best_value"] == pytest.approx(summary["best_value"])
    assert parent.data.tags["best.train.lr"] == str(summary["best_params"]["lr"])
    children = _runs("tune_trial")
    assert len(children) == 3
    assert {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[STATE_TAG] for c in children} == {"COMPLETE"}
    assert all("val/acc" in c.data.metrics and "train.lr" in c.data.params for c in children)
    assert max(c.data.metrics["tune/objective"] for c in children) == pytest.approx(summary["best_value"])
    assert {c.data.params["train.epochs"] for c in children} == {"1"}

    # the best configuration: a train: section that train's Params accepts on top of params.yaml
    best_file = root / "data" / "reports" / "tune" / "best_params.yaml"
    best = yaml.safe_load(best_file.read_text(encoding="utf-8"))
    assert set(best) == {"train"} and set(best["train"]) == {"lr", "label_smoothing"}
    base_train, _ = load_stage("train", params_path)
    tuned = TrainParams.model_validate(base_train.model_dump() | best["train"])
    assert tuned.lr == summary["best_params"]["lr"] and tuned.network == "resnet_tiny"
    assert summary["run_command"] == f"imgcls run --params-override {best_file}"
    dvc_text = (best_file.parent / "dvc_exp_command.txt").read_text(encoding="utf-8")
    assert dvc_text.startswith(f"dvc exp run -S train.lr={summary['best_params']['lr']!r} -S train.label_smoothing=")

    # `imgcls run --params-override` reads params.yaml with the best values merged in; params.yaml is unchanged
    before = params_path.read_bytes()
    merged = merge_override(params_path, best_file, root / ".imgcls" / "cache")
    merged_train, merged_paths = load_stage("train", merged)
    assert merged_train.lr == tuned.lr and merged_train.label_smoothing == tuned.label_smoothing
    assert merged_train.batch_size == 4 and merged_paths.prepared == str(root / "data" / "prepared")
    assert params_path.read_bytes() == before
    args = build_parser().parse_args(["run", "--params-override", str(best_file)])
    assert args.params_override == str(best_file)

    # a second invocation continues the same study under the same parent, two trials at once
    write(n_trials=2, parallel=2)
    again = tune(params_path)
    assert again["trials"] == 5 and again["new_trials"] == 2 and again["mlflow_parent_run_id"] == parent.info.run_id
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / STUDY_FILE}").trials) == 5
    assert len(_runs("tune")) == 1
    children = _runs("tune_trial")
    assert len(children) == 5 and {c.data.tags[PARENT_TAG] for c in children} == {parent.info.run_id}

    # trials register nothing and log no model
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == [] and client.search_model_versions() == []
    assert mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list") == []


def test_pruned_trials_are_recorded_as_pruned(tune_project, capsys):
    root, write = tune_project
    # a threshold no accuracy reaches: every trial is stopped after its first epoch, deterministically
    write(n_trials=2, epochs_per_trial=3, pruner="threshold", prune_below=2.0, pruner_warmup_epochs=0)
    assert main(["tune"]) == 0
    out = capsys.readouterr().out
    assert "2 pruned" in out and "no trial has completed yet" in out

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / STUDY_FILE}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.intermediate_values.keys() == {0} for t in study.trials)
    children = _runs("tune_trial")
    assert len(children) == 2
    assert {c.info.status for c in children} == {"KILLED"}
    assert {c.data.tags[STATE_TAG] for c in children} == {"PRUNED"}
    assert {c.data.metrics["tune/epochs"] for c in children} == {1.0}
    assert not (root / "data" / "reports" / "tune" / "best_params.yaml").exists()


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"netwrk": {"choices": ["resnet_tiny"]}}, "tune.space: netwrk: not a train setting"),
        ({"epochs": {"low": 1, "high": 5}}, "tune.space: epochs: not searchable"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "tune.space.lr: low must be below high"),
        ({"lr": {"low": 0.1}}, "tune.space.lr: a range needs both low and high"),
        ({"network": {"choices": ["resnet_huge"]}}, "tune.space.network: 'resnet_huge' is not a valid train.network"),
        ({"label_smoothing": {"low": 0.0, "high": 1.0}}, "tune.space.label_smoothing: 1.0 is not a valid"),
    ],
)
def test_bad_search_space_is_one_line(tune_project, capsys, space, message):
    _, write = tune_project
    write(space=space)
    assert main(["tune"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_study_storage_sits_beside_the_mlflow_store(tmp_path):
    assert storage_url("sqlite:///mlflow.db", root=tmp_path) == f"sqlite:///{tmp_path / STUDY_FILE}"
    assert storage_url(f"sqlite:///{tmp_path}/db/m.db") == f"sqlite:///{tmp_path / 'db' / STUDY_FILE}"
    server = "postgresql+psycopg://mlflow:secret@db.example:5432/mlflow"
    assert storage_url(server) == server  # same server and database (Optuna's tables in schema `optuna`)
    assert storage_url("http://mlflow.example:5000", root=tmp_path) == f"sqlite:///{tmp_path / STUDY_FILE}"
    assert storage_url("sqlite:///mlflow.db", explicit="sqlite:////elsewhere/s.db") == "sqlite:////elsewhere/s.db"
    with pytest.raises(UserError, match="set tune.storage"):
        storage_url("mysql://u:p@h/db")


def test_dvc_command_quotes_values_dvc_reads_back():
    command = dvc_command({"lr": 0.0012345678901, "network": "resnet_tiny", "batch_size": 64})
    assert command == "dvc exp run -S train.lr=0.0012345678901 -S train.network=resnet_tiny -S train.batch_size=64"


def test_override_may_not_move_paths_and_names_its_file(tune_project, capsys):
    root, write = tune_project
    params_path = write()
    moved = root / "moved.yaml"
    moved.write_text("paths: {prepared: elsewhere}\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="moved.yaml: paths: an override may not move"):
        merge_override(params_path, moved, root / "cache")
    typo = root / "typo.yaml"
    typo.write_text("train: {lrr: 0.1}\n", encoding="utf-8")
    assert main(["run", "--params-override", str(typo)]) == 2  # one line, before Prefect starts anything
    err = capsys.readouterr().err.strip()
    assert "typo.yaml (over params.yaml): train.lrr" in err and "\n" not in err


def test_no_prepared_store_is_one_line(tmp_path, monkeypatch, tracking, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tune": TUNE}), encoding="utf-8")
    assert main(["tune"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run the `augment` stage first" in err and "\n" not in err
    assert not (tmp_path / STUDY_FILE).exists()  # nothing opened before the inputs are there
