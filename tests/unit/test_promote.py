"""promote against a real MLflow sqlite registry, with real pyfunc models (tests/helpers/brightness_pyfunc.py)
scored on generated images."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tasks.common.errors import UserError
from tasks.common.params import Paths
from tasks.judging import registry
from tasks.promote import Params, main, promote_version, rollback, run
from tests.helpers.brightness_models import train_run, write_split

NAME = "imgcls"
# floor low enough that deliberately imperfect models can become champion
PARAMS = Params(model_name=NAME, floor=0.6, min_improvement=0.02, max_class_recall_drop=0.1, score_batch_size=16)
ALL_CLASSES = {"dark": 30, "mid": 30, "bright": 30}


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return Paths(
        store=str(tmp_path / "store"),
        split=str(tmp_path / "split.parquet"),
        train_dir=str(tmp_path / "train"),
        reports=str(tmp_path / "reports"),
        cache=str(tmp_path / "cache"),
    )


def candidate(paths: Paths, tag: str, error_rates: dict[str, float], **kw) -> Paths:
    """Train (log) a model with the given per-class error rates; paths pointing at its run.json."""
    train_dir = paths.model_copy(update={"train_dir": f"{paths.train_dir}_{tag}"})
    train_run(Path(train_dir.train_dir), error_rates, **kw)
    return train_dir


def client() -> MlflowClient:
    return MlflowClient()


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in client().get_registered_model(NAME).aliases.items()}


def decision_file(paths: Paths) -> dict:
    return json.loads((paths.report_dir("promote") / "decision.json").read_text())


def gate(decision: dict, name: str) -> dict:
    return next(g for g in decision["gates"] if g["name"] == name)


def test_first_model_below_floor_is_not_promoted(paths):
    write_split(paths, ALL_CLASSES)
    result = run(PARAMS, candidate(paths, "a", {"dark": 0.5, "mid": 0.5, "bright": 0.5}))
    assert result["decision"] == "rejected"
    assert aliases() == {"challenger": "1"}
    decision = decision_file(paths)
    assert not gate(decision, "floor")["passed"] and gate(decision, "floor")["value"] < 0.6
    assert decision["champion"] is None
    assert client().get_model_version(NAME, "1").tags["promotion_decision"] == "rejected"


def _run_tags(train: Paths) -> dict[str, str]:
    run_id = json.loads((Path(train.train_dir) / "run.json").read_text())["run_id"]
    return client().get_run(run_id).data.tags


def test_every_trained_model_is_registered_or_its_run_says_why_not(paths):
    train = candidate(paths, "a", {"dark": 0.5, "mid": 0.5, "bright": 0.5})
    # no split manifest yet: promote cannot score, registers nothing, and the training run says why
    with pytest.raises(UserError) as err:
        run(PARAMS, train)
    tags = _run_tags(train)
    assert tags["imgcls.registered"] == "false"
    assert tags["imgcls.not_registered_reason"] == f"promote failed: {err.value}"
    assert client().search_model_versions(f"name='{NAME}'") == []
    # a model that fails the gates is still registered (as the challenger), and its run says which version
    write_split(paths, ALL_CLASSES)
    assert run(PARAMS, train)["decision"] == "rejected"
    tags = _run_tags(train)
    assert tags["imgcls.registered"] == "true" and tags["imgcls.registered_version"] == "1"
    assert tags["imgcls.registered_model"] == NAME and "imgcls.not_registered_reason" not in tags


def test_first_good_model_becomes_champion_with_its_record(paths):
    write_split(paths, ALL_CLASSES)
    train = candidate(paths, "a", {"bright": 0.1}, logged_metrics={"test/macro_f1": 0.97, "train/loss": 0.1})
    result = run(PARAMS, train)
    assert result["decision"] == "promoted" and aliases() == {"champion": "1"}
    decision = decision_file(paths)
    assert all(g["passed"] for g in decision["gates"]) and decision["test_images"] == 90
    assert decision["candidate"]["per_class_recall"] == {"bright": 0.9, "dark": 1.0, "mid": 1.0}
    tags = client().get_model_version(NAME, "1").tags
    run_info = json.loads((Path(train.train_dir) / "run.json").read_text())
    assert tags["run_id"] == run_info["run_id"] and tags["dataset_version"] == "ds-1"
    assert tags["git_commit"] == "abc1234" and tags["metric.test/macro_f1"] == "0.97"
    assert "metric.train/loss" not in tags
    assert tags["promotion_decision"] == "promoted" and tags["manual"] == "false"
    assert float(tags["promotion_metric_value"]) == pytest.approx(decision["candidate"]["metrics"]["test/macro_f1"])
    # promoting the same training run again re-judges the same version instead of registering a copy
    again = run(PARAMS, train)
    assert again["decision"] == "kept" and again["candidate_version"] == "1"
    assert len(client().search_model_versions(f"name='{NAME}'")) == 1
    assert client().get_model_version(NAME, "1").tags["promotion_decision"] == "promoted"


def test_worse_second_model_becomes_challenger_and_champion_stays(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"bright": 0.1}))
    result = run(PARAMS, candidate(paths, "b", {"dark": 0.3, "mid": 0.3, "bright": 0.3}))
    assert result["decision"] == "rejected" and result["compared_to"] == "1"
    assert aliases() == {"champion": "1", "challenger": "2"}
    decision = decision_file(paths)
    assert not gate(decision, "improvement")["passed"]
    assert "improvement" in decision["reason"]


def test_better_model_takes_over_and_old_champion_becomes_previous(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.2, "mid": 0.2, "bright": 0.2}))
    result = run(PARAMS, candidate(paths, "b", {"bright": 0.1}))
    assert result["decision"] == "promoted"
    assert aliases() == {"champion": "2", "previous": "1"}
    assert client().get_model_version(NAME, "1").tags["replaced_by"] == "2"
    decision = decision_file(paths)
    assert decision["champion"]["version"] == "1"
    assert gate(decision, "improvement")["value"] > 0.1


def test_class_recall_drop_blocks_a_better_average(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.3, "mid": 0.3, "bright": 0.3}))
    # perfect on dark and mid, but bright recall falls from 0.7 to 0.5
    result = run(PARAMS, candidate(paths, "b", {"bright": 0.5}))
    decision = decision_file(paths)
    assert gate(decision, "improvement")["passed"] and gate(decision, "floor")["passed"]
    recall = gate(decision, "class_recall_drop")
    assert not recall["passed"] and recall["value"] == pytest.approx(0.2) and "'bright'" in recall["detail"]
    assert result["decision"] == "rejected" and aliases() == {"champion": "1", "challenger": "2"}


def test_champion_is_rescored_on_the_current_test_set_not_its_stale_numbers(paths):
    # the test set once had no bright images: A (bad at bright) scored perfectly and became champion
    write_split(paths, {"dark": 30, "mid": 30}, seed=1)
    run(PARAMS, candidate(paths, "a", {"bright": 0.5}, logged_metrics={"test/macro_f1": 0.99}))
    assert aliases() == {"champion": "1"}
    stale = float(client().get_model_version(NAME, "1").tags["promotion_metric_value"])
    assert stale == 1.0
    # new data brought bright images into the test split; B is a uniform 90% model
    write_split(paths, ALL_CLASSES, seed=2)
    params = PARAMS.model_copy(update={"max_class_recall_drop": 0.15})
    result = run(params, candidate(paths, "b", {"dark": 0.1, "mid": 0.1, "bright": 0.1}))
    decision = decision_file(paths)
    champion_now = decision["champion"]["metrics"]["test/macro_f1"]
    # against the stale 1.0 (or the logged 0.99) B would have lost; on today's images it wins
    assert champion_now < decision["candidate"]["metrics"]["test/macro_f1"] < stale
    assert decision["champion"]["per_class_recall"]["bright"] == 0.5
    assert result["decision"] == "promoted" and aliases() == {"champion": "2", "previous": "1"}


def test_latency_bound_is_measured_through_the_pyfunc(paths):
    write_split(paths, ALL_CLASSES)
    params = PARAMS.model_copy(update={"max_latency_ms": 1e-6})  # no predict call is that fast
    result = run(params, candidate(paths, "a", {}))
    latency = gate(decision_file(paths), "latency")
    assert latency["value"] > 1e-6 and not latency["passed"]
    assert result["decision"] == "rejected"


def test_manual_promote_and_rollback(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"bright": 0.1}))
    run(PARAMS, candidate(paths, "b", {"dark": 0.3, "mid": 0.3, "bright": 0.3}))
    assert aliases() == {"champion": "1", "challenger": "2"}

    with pytest.raises(UserError, match="reason"):
        promote_version(NAME, 2, "  ", cache=paths.cache)
    with pytest.raises(UserError, match="no version 7"):
        promote_version(NAME, 7, "hotfix", cache=paths.cache)
    with pytest.raises(UserError, match="no registered model named 'nope'"):
        promote_version("nope", 1, "hotfix", cache=paths.cache)
    with pytest.raises(UserError, match="already the champion"):
        promote_version(NAME, 1, "hotfix", cache=paths.cache)

    promote_version(NAME, 2, "hotfix for class mid", cache=paths.cache)
    assert aliases() == {"champion": "2", "previous": "1"}
    tags = client().get_model_version(NAME, "2").tags
    assert tags["manual"] == "true" and tags["promotion_reason"] == "hotfix for class mid"
    assert tags["promotion_decision"] == "manual_promote" and tags["promoted_by"] and tags["promotion_decided_at"]

    rollback(NAME, cache=paths.cache)
    assert aliases() == {"champion": "1"}
    demoted = client().get_model_version(NAME, "2").tags
    assert demoted["rolled_back"] == "true" and demoted["rolled_back_to"] == "1"
    assert client().get_model_version(NAME, "1").tags["promotion_decision"] == "rollback"
    with pytest.raises(UserError, match="no previous champion"):
        rollback(NAME, cache=paths.cache)


def _promote_in_process(params_json: str, paths_json: str) -> None:
    run(Params.model_validate_json(params_json), Paths.model_validate_json(paths_json))


def _start_promotion(paths: Paths):
    process = multiprocessing.get_context("spawn").Process(
        target=_promote_in_process, args=(PARAMS.model_dump_json(), paths.model_dump_json())
    )
    # A spawned child starts from this process's sys.path, where MLflow has put the code folder of
    # every pyfunc loaded so far: a registered imgcls model's folder holds a minimal `tasks` package
    # (the shipped base only). The project's own root goes first, so the child imports the real one.
    saved = list(sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    try:
        process.start()
    finally:
        sys.path[:] = saved
    return process


def _wait_until_blocked_on_lock(pid: int, timeout: float = 120.0) -> None:
    """The process has scored everything and read the champion, and now waits for the registry lock:
    the kernel lists it as a blocked flock waiter (`->`) in /proc/locks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            "->" in line.split() and str(pid) in line.split() for line in Path("/proc/locks").read_text().splitlines()
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} never waited for the registry lock")


def _version_of(train: Paths) -> str:
    run_id = json.loads((Path(train.train_dir) / "run.json").read_text())["run_id"]
    return str(client().search_model_versions(f"name='{NAME}' and run_id='{run_id}'")[0].version)


def test_two_processes_promoting_at_once_never_leave_the_worse_as_champion(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.3, "mid": 0.3, "bright": 0.3}))
    # both beat the champion by far; holding the lock until both have read it guarantees they overlap
    worse = candidate(paths, "b", {"dark": 0.1, "mid": 0.1, "bright": 0.1})
    better = candidate(paths, "c", {})
    with registry.registry_lock(registry.lock_path(paths.cache)):
        procs = [_start_promotion(p) for p in (worse, better)]
        for p in procs:
            _wait_until_blocked_on_lock(p.pid)
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert aliases()["champion"] == _version_of(better)


def test_a_champion_moved_while_waiting_for_the_lock_is_rescored_before_the_alias_moves(paths):
    """The interleaving a missing re-read would get wrong, forced: the worse run reads champion A,
    then the better model becomes champion while the worse run waits for the lock."""
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.3, "mid": 0.3, "bright": 0.3}))
    worse = candidate(paths, "b", {"dark": 0.1, "mid": 0.1, "bright": 0.1})
    better = candidate(paths, "c", {})
    with registry.registry_lock(registry.lock_path(paths.cache)):
        process = _start_promotion(worse)
        _wait_until_blocked_on_lock(process.pid)
        # meanwhile another promotion (we hold its lock) moved the champion to the better model
        info = json.loads((Path(better.train_dir) / "run.json").read_text())
        better_version = mlflow.register_model(info["model_uri"], NAME).version
        client().set_registered_model_alias(NAME, "champion", better_version)
        client().set_registered_model_alias(NAME, "previous", "1")
    process.join(120)
    assert process.exitcode == 0
    assert aliases() == {"champion": str(better_version), "previous": "1", "challenger": _version_of(worse)}
    decision = decision_file(paths)
    assert decision["decision"] == "rejected" and decision["champion"]["version"] == str(better_version)


def test_stage_entry_reports_a_missing_training_run_as_one_line(paths, capsys):
    Path("params.yaml").write_text(yaml.safe_dump({"paths": paths.model_dump(), "promote": {}}))
    assert main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "run.json not found" in err and len(err.splitlines()) == 1


def test_an_experiment_is_judged_but_never_registered(paths, monkeypatch):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.1, "mid": 0.1, "bright": 0.1}))  # production: champion v1
    monkeypatch.setenv("DVC_EXP_NAME", "lower-lr")  # what `dvc exp run` sets
    better = candidate(paths, "b", {})
    result = run(PARAMS, better)
    assert result["decision"] == "not_registered" and "lower-lr" in result["reason"]
    decision = decision_file(paths)
    assert decision["would_be"] == "promoted" and decision["registered"] is False
    assert decision["champion"]["version"] == "1"
    assert [str(v.version) for v in client().search_model_versions(f"name='{NAME}'")] == ["1"]
    assert aliases() == {"champion": "1"}
    assert _run_tags(better)["imgcls.registered"] == "false"
    # the params switch does the same outside DVC; `always` registers even under dvc exp
    monkeypatch.delenv("DVC_EXP_NAME")
    assert run(PARAMS.model_copy(update={"registry_writes": "never"}), better)["decision"] == "not_registered"
    monkeypatch.setenv("DVC_EXP_NAME", "lower-lr")
    assert run(PARAMS.model_copy(update={"registry_writes": "always"}), better)["decision"] == "promoted"


def test_another_label_set_is_refused_until_confirmed(paths):
    write_split(paths, ALL_CLASSES)
    run(PARAMS, candidate(paths, "a", {"dark": 0.1, "mid": 0.1, "bright": 0.1}))
    garments = [["dark", 40], ["mid", 128], ["bright", 215], ["white", 250]]
    result = run(PARAMS, candidate(paths, "b", {}, classes=garments))
    assert result["decision"] == "refused"
    assert "label set differs" in result["reason"] and "white" in result["reason"]
    decision = decision_file(paths)
    assert decision["decision"] == "refused" and "--new-task" in decision["reason"]
    assert aliases() == {"champion": "1"}
    with pytest.raises(UserError, match="label set differs"):
        promote_version(NAME, 2, "new garment classes", cache=paths.cache)
    assert promote_version(NAME, 2, "new garment classes", cache=paths.cache, new_task=True)["champion"] == "2"
