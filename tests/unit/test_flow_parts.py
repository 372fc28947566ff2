"""The parts of the flow that run without Prefect's engine: dataset version, skip rule, the markdown
shown in Prefect, and the workspace lock the flow holds."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from flows.artifacts import data_quality_markdown, decision_markdown, metrics_markdown, mlflow_run_url
from flows.pipeline import DATA_STAGES, MODEL_STAGES, imgcls_pipeline, model_config_digest, one_run_at_a_time, skip_note
from tasks.common.atomic import write_parquet
from tasks.common.entry import stage_main
from tasks.common.params import Paths
from tasks.common.versioning import dataset_version
from tasks.common.workspace_lock import WorkspaceBusy, lock_path
from tasks.stages import STAGES
from tests.unit.test_workspace_lock import holding_process


def split_paths(tmp_path, rows) -> Paths:
    paths = Paths(split=str(tmp_path / "split.parquet"), reports=str(tmp_path / "reports"))
    df = pd.DataFrame(rows, columns=["image_id", "label", "split"]).assign(source_path="x", bytes=1)
    write_parquet(df, paths.split)
    return paths


def test_dataset_version_follows_content_not_row_order(tmp_path):
    rows = [("aa", "cat", "train"), ("bb", "dog", "val"), ("cc", "dog", "test")]
    v = dataset_version(split_paths(tmp_path, rows))
    assert len(v) == 64
    assert dataset_version(split_paths(tmp_path, rows[::-1])) == v
    assert dataset_version(split_paths(tmp_path, [*rows[:2], ("cc", "cat", "test")])) != v  # relabelled
    assert dataset_version(split_paths(tmp_path, [*rows[:2], ("cc", "dog", "val")])) != v  # moved split
    assert dataset_version(split_paths(tmp_path, [*rows, ("dd", "cat", "train")])) != v  # new image


def test_stage_order_is_the_pipeline_order():
    assert DATA_STAGES + MODEL_STAGES == tuple(STAGES)


def test_skip_only_when_data_and_model_params_are_unchanged():
    params = {"train": {"epochs": 3}, "clean": {"min_side": 8}}
    config = model_config_digest(params)
    last = {
        "dataset_version": "v1",
        "model_config": config,
        "flow_run_name": "calm-fox",
        "flow_run_id": "id1",
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    note = skip_note(last, "v1", config, force=False)
    assert note.startswith("no new data since run calm-fox")
    assert skip_note(last, "v1", config, force=True) is None
    assert skip_note(last, "v2", config, force=False) is None
    assert skip_note(None, "v1", config, force=False) is None
    assert skip_note(last, "v1", model_config_digest({**params, "train": {"epochs": 4}}), force=False) is None
    # data-stage params change the data itself, which the dataset version already sees
    assert model_config_digest({**params, "clean": {"min_side": 16}}) == config


def test_data_quality_nests_the_stage_summaries(tmp_path):
    paths = Paths(reports=str(tmp_path))
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "summary.md").write_text("# clean: 9 of 10 images kept\n\n| reason | images |\n")
    text = data_quality_markdown(paths)
    assert "## clean: 9 of 10 images kept" in text and "| reason | images |" in text
    assert "_validate: no summary.md was written_" in text


def test_metrics_and_decision_tables():
    table = metrics_markdown({"test/acc": 0.912345, "val/acc": 0.9})
    assert "| test/acc | 0.9123 |" in table and table.index("test/acc") < table.index("val/acc")
    decision = decision_markdown(
        {
            "decision": "challenger",
            "version": 3,
            "gates": [
                {"name": "floor", "value": 0.95, "threshold": 0.9, "passed": True},
                {"name": "min_improvement", "value": 0.001, "threshold": 0.002, "passed": False},
            ],
        }
    )
    assert "- **decision**: challenger" in decision
    assert "| name | value | threshold | passed |" in decision
    assert "| min_improvement | 0.0010 | 0.0020 | False |" in decision


def test_mlflow_link_only_for_a_server():
    run = {"run_id": "r1", "experiment_id": "7", "tracking_uri": "http://127.0.0.1:5000/"}
    assert mlflow_run_url(run) == "http://127.0.0.1:5000/#/experiments/7/runs/r1"
    assert mlflow_run_url({**run, "tracking_uri": "sqlite:///mlflow.db"}) is None


def test_the_flow_holds_the_workspace_for_its_own_stages_and_refuses_a_second_run(tmp_path):
    cache = tmp_path / "cache"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"cache": str(cache), "reports": str(tmp_path / "reports")}}))
    seen = {}

    @one_run_at_a_time
    def pipeline(params_path: str = "params.yaml", force: bool = False) -> str:
        # what the flow does in-process: run a stage, which takes the same lock again
        seen["stage"] = stage_main("split", lambda p, paths: {"ran": True}, ["--params", params_path])
        seen["holder"] = json.loads(lock_path(cache).read_text())
        return "done"

    assert pipeline(params_path=str(params)) == "done"
    assert seen["stage"] == 0 and seen["holder"]["pid"] == os.getpid()
    assert seen["holder"]["command"].startswith(f"imgcls run --params {params}")
    assert lock_path(cache).read_text() == ""  # released when the flow returned

    with holding_process(cache) as holder, pytest.raises(WorkspaceBusy, match=f"pid {holder.pid}"):
        imgcls_pipeline.fn(params_path=str(params))
    assert not (tmp_path / "reports").exists()  # refused before any stage ran
