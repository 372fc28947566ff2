"""The production profile (docs/production.md), end to end on real servers: PostgreSQL, a local S3
(moto's server mode), `mlflow server` on PostgreSQL with artifacts in S3, Prefect's server on PostgreSQL,
and a DVC project whose remote is S3. `imgcls run` drives the whole pipeline on the digits sample at
16 px for one epoch; then each record is read back from where production keeps it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tasks.stages import STAGES
from tests.helpers.dvc_project import make_project, project_env, sh
from tests.integration import prod_servers as ps

MISSING = ps.missing_requirements()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.timeout(900)]

MODEL = "imgcls"
MLFLOW_BUCKET, DVC_BUCKET = "imgcls-mlflow", "imgcls-dvc"
PREFECT_AUTH = ("imgcls", "prefect-test-secret")
# the digits sample at 16 px, one epoch, suspect labels by the kernel model only; floor 0: this test is
# about where the records land, not about accuracy
SMALL = {
    "ingest": {"sample_upscale": 2},
    "validate": {"suspect_label": {"model": "kernel", "folds": 3, "retrain": False}},
    "augment": {"image_size": 16},
    "train": {"epochs": 1, "num_workers": 0},
    "promote": {"floor": 0.0},
}


@pytest.fixture
def production(tmp_path):
    """PostgreSQL + S3 first (seconds), then both servers start while the DVC project is made."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(ps.postgres_cluster(("mlflow", "prefect")))
        s3 = stack.enter_context(ps.s3_server(logs, (MLFLOW_BUCKET, DVC_BUCKET)))
        mlflow_url, mlflow_proc = stack.enter_context(
            ps.mlflow_server(logs, pg.url("mlflow"), f"s3://{MLFLOW_BUCKET}/artifacts", s3)
        )
        prefect_api, prefect_proc = stack.enter_context(
            ps.prefect_server(logs, pg.url("prefect", "postgresql+asyncpg"), ":".join(PREFECT_AUTH))
        )

        root = make_project(tmp_path / "proj", SMALL)
        sh(["dvc", "remote", "add", "--force", "--default", "storage", f"s3://{DVC_BUCKET}/cache"], root)
        sh(["dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint], root)
        sh(["git", "commit", "-qam", "S3 remote"], root)

        mlflow_proc.wait_until(ps.http_ok(f"{mlflow_url}/health"), timeout=240)
        prefect_proc.wait_until(ps.http_ok(f"{prefect_api}/health", auth=PREFECT_AUTH), timeout=240)
        env = {
            **project_env(root),
            **s3.env,
            "MLFLOW_TRACKING_URI": mlflow_url,
            "PREFECT_API_URL": prefect_api,
            "PREFECT_API_AUTH_STRING": ":".join(PREFECT_AUTH),
            "PREFECT_HOME": str(tmp_path / "prefect-client"),
        }
        env.pop("MLFLOW_S3_ENDPOINT_URL", None)  # artifacts go through the tracking server, which holds the keys
        yield {"pg": pg, "s3": s3, "mlflow": mlflow_url, "prefect": prefect_api, "root": root, "env": env, "logs": logs}


def run(args: list[str], root: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """`args` in the project; its stderr goes to a log file (readable while it runs: Prefect logs there)."""
    log = root.parent / "logs" / f"{Path(args[-1]).name}.stderr"
    with open(log, "w") as err:
        try:
            proc = subprocess.run(
                args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(args)} ran over {timeout}s:\n{log.read_text()[-5000:]}") from None
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{log.read_text()[-5000:]}"
    )
    return proc


def stage_task_runs(prefect_api: str, flow_run_id: str, timeout: float = 60) -> list[dict]:
    """The flow run's task runs, once all eight stages are COMPLETED: task runs reach the server's database
    as events, through its task-run recorder service, a moment after the client reported them."""
    deadline = time.monotonic() + timeout
    while True:
        found = requests.post(
            f"{prefect_api}/task_runs/filter",
            auth=PREFECT_AUTH,
            timeout=10,
            json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        ).json()
        done = {t["name"] for t in found if t["state_type"] == "COMPLETED"}
        if set(STAGES) <= done or time.monotonic() > deadline:
            return found
        time.sleep(1)


def digit_images(folder: Path, n: int = 4) -> list[str]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir()
    out = []
    for i in range(n):
        arr = (digits.images[i] * (255 / 16)).astype(np.uint8)
        path = folder / f"digit_{digits.target[i]}_{i}.png"
        Image.fromarray(arr).resize((16, 16), Image.NEAREST).save(path)
        out.append(str(path))
    return out


def test_pipeline_on_postgres_s3_mlflow_and_prefect_servers(production, tmp_path, monkeypatch):
    pg, s3, mlflow_url, prefect_api, root, env = (
        production[k] for k in ("pg", "s3", "mlflow", "prefect", "root", "env")
    )
    started = time.monotonic()
    out = run([str(Path(sys.executable).parent / "imgcls"), "run"], root, env)
    flow_seconds = time.monotonic() - started
    summary = json.loads(out.stdout[out.stdout.rfind("\n{\n") + 1 :])  # the CLI prints the summary last
    assert list(summary["stages"]) == list(STAGES) and summary["skipped"] == []
    assert summary["dvc"] == {"recorded": True, "committed": list(STAGES), "pushed": True}
    run_id, flow_run_id = summary["mlflow_run_id"], summary["flow_run_id"]
    decision = json.loads((root / "reports/promote/decision.json").read_text())
    assert decision["decision"] == "promoted"
    champion = str(decision["aliases"]["champion"])

    # MLflow: the run, the version and its alias through the server ...
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED" and "test/acc" in mlrun.data.metrics
    assert mlrun.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients never see S3 keys
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == champion and version.run_id == run_id
    # ... and in its PostgreSQL database, where the server keeps them
    assert pg.query("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == [("FINISHED",)]
    assert pg.query(
        "mlflow", "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s", (MODEL, "champion")
    ) == [(int(champion),)]

    # the model's files and the run's reports are objects in the artifacts bucket
    keys = s3.keys(MLFLOW_BUCKET)
    model_id = version.model_id or version.source.rsplit("/", 1)[-1]  # MLflow 3: source is models:/<model_id>
    mlmodels = [k for k in keys if k.endswith("/MLmodel")]
    assert any(f"/{model_id}/" in k for k in mlmodels), (version.source, mlmodels)
    assert any(f"/{run_id}/artifacts/evaluate/" in k for k in keys), keys[:50]

    # Prefect: the flow run and its stage task runs, through the authenticated API and in its database
    assert requests.get(f"{prefect_api}/flow_runs/{flow_run_id}", timeout=10).status_code == 401
    flow_run = requests.get(f"{prefect_api}/flow_runs/{flow_run_id}", auth=PREFECT_AUTH, timeout=10).json()
    assert flow_run["state_type"] == "COMPLETED" and flow_run["name"] == summary["flow_run_name"]
    task_runs = stage_task_runs(prefect_api, flow_run_id)
    assert {t["name"]: t["state_type"] for t in task_runs if t["name"] in STAGES} == dict.fromkeys(STAGES, "COMPLETED")
    assert pg.query(
        "prefect",
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id WHERE r.id = %s",
        (flow_run_id,),
    ) == [("imgcls-pipeline", "COMPLETED")]

    # DVC: the flow pushed to the S3 remote; a push now has nothing left to send and the cache is in sync
    assert s3.keys(DVC_BUCKET, "cache/files/md5/")
    assert "Everything is up to date" in run([sys.executable, "-m", "dvc", "push"], root, env).stdout
    assert "in sync" in run([sys.executable, "-m", "dvc", "status", "--cloud"], root, env).stdout

    # the champion loads from the registry (files fetched from S3 through the server), predicts and serves
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    from fastapi.testclient import TestClient

    from flows.predict import load_model, predict_paths
    from flows.serve import create_app

    images = digit_images(tmp_path / "digits")
    predictions = predict_paths(load_model(f"models:/{MODEL}@champion"), images)
    assert (predictions["error"] == "").all() and predictions["label"].astype(str).str.len().gt(0).all()
    with TestClient(create_app(f"models:/{MODEL}@champion", tmp_path / "feedback")) as http:
        assert http.get("/health").json()["model_version"] == champion
        with open(images[0], "rb") as fh:
            answer = http.post("/predict", files={"image": ("d.png", fh, "image/png")})
        assert answer.status_code == 200 and answer.json()["label"], answer.text
    print(f"imgcls run on the production profile took {flow_seconds:.0f}s")
