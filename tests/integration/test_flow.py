"""The whole pipeline as a Prefect flow on a real ephemeral Prefect API, on a tiny generated folder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from prefect import get_client
from prefect.testing.utilities import prefect_test_harness

import flows.pipeline as pipeline
from tasks.common.params import stage_params_model
from tasks.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("red", "green", "blue")
# smallest settings that still exercise every stage; keys a stage does not have are left out
OVERRIDES = {
    "validate": {"min_per_class": 5, "suspect_label": {"folds": 3}},
    "augment": {"image_size": 16},
    "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "network": "resnet_small"},
    "promote": {"floor": 0.0},
}


def write_images(folder: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 110, (24, 24, 3), dtype=np.uint8)
            arr[:, :, c] += 140  # the class is the dominant colour; the noise keeps every image distinct
            Image.fromarray(arr).save(folder / name / f"{seed}_{i}.png")


def small_params(source: Path) -> dict:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["ingest"]["source"] = str(source)
    for stage, values in OVERRIDES.items():
        fields = stage_params_model(stage).model_fields
        section = data.setdefault(stage, {}) or {}
        for key, value in values.items():
            if key in fields:
                section[key] = {**(section.get(key) or {}), **value} if isinstance(value, dict) else value
        data[stage] = section
    return data


async def artifact_keys(flow_run_id: str) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found}


QUIET_FORBIDDEN = ("Traceback", "ERROR", "database is locked", "telemetry")


def test_cli_run_is_quiet_then_the_flow_skips_until_new_data(tmp_path, monkeypatch):
    """`imgcls run` in a fresh project as a new user gets it (no Prefect/MLflow settings, an empty HOME):
    nothing in its output a user cannot act on, Prefect's home and MLflow's artifacts inside the project,
    every stage's one-line summary, an experiment MLflow's UI opens on its runs, a run with its dataset.
    Then the flow again on a real Prefect API: it skips the model stages while nothing is new, and trains
    once new labelled images arrive (one training shared by both checks: each costs a whole pipeline)."""
    import mlflow

    project = tmp_path / "project"
    write_images(project / "source", per_class=14, seed=0)
    params = small_params(project / "source")
    params["validate"]["suspect_label"]["model"] = "kernel"  # the CNN's cost adds nothing to these checks
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_")) and k not in ("DO_NOT_TRACK", "PYTEST_CURRENT_TEST")
    }
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run"], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    for forbidden in QUIET_FORBIDDEN:  # case matters but for telemetry ("error" in a summary key is fine)
        found = forbidden.lower() in output.lower() if forbidden == "telemetry" else forbidden in output
        assert not found, f"{forbidden!r} in the output:\n{output[-3000:]}"
    for stage in STAGES:
        assert f"Task run {stage!r} - finished in " in output
    assert (project / ".imgcls" / "prefect" / "prefect.db").is_file() and not (tmp_path / "home" / ".prefect").exists()

    run_info = json.loads((project / "artifacts" / "train" / "run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment(run_info["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (project.resolve() / "mlruns" / "imgcls").as_uri()
    inputs = client.get_run(run_info["run_id"]).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("split", run_info["dataset_version"][:12])]
    first = json.loads((project / "reports" / ".last_flow.json").read_text())
    assert first["dataset_version"] == run_info["dataset_version"]

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    with prefect_test_harness(server_startup_timeout=180):  # a loaded machine starts the API slowly
        second = pipeline.imgcls_pipeline("params.yaml")
        assert second["skipped"] == list(pipeline.MODEL_STAGES)
        assert f"no new data since run {first['flow_run_name']}" in second["note"]
        assert "train" not in second["stages"] and second["last_run"]["mlflow_run_id"] == run_info["run_id"]
        assert "imgcls-skipped" in asyncio.run(artifact_keys(second["flow_run_id"]))

        write_images(project / "data" / "inbox", per_class=2, seed=1)  # new labelled images arrive
        third = pipeline.imgcls_pipeline("params.yaml")
        assert list(third["stages"]) == list(STAGES) and third["skipped"] == []
        assert third["dataset_version"] != first["dataset_version"] and third["mlflow_run_id"] != run_info["run_id"]
        assert "test/acc" in third["metrics"] and third["decision"]
        assert third["dvc"]["recorded"] is False  # not a DVC project
        last = json.loads((project / "reports" / ".last_flow.json").read_text())
        assert last["dataset_version"] == third["dataset_version"] and last["flow_run_id"] == third["flow_run_id"]
        assert {"imgcls-data-quality", "imgcls-evaluation", "imgcls-promotion", "imgcls-mlflow-run"} <= asyncio.run(
            artifact_keys(third["flow_run_id"])
        )
