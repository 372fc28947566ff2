"""promote against a real `mlflow server` (sqlite backend, served artifacts), checked over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests
from mlflow import MlflowClient

from tasks.common.params import Paths
from tasks.promote import Params, run
from tests.helpers.brightness_models import train_run, write_split

PARAMS = Params(model_name="imgcls", floor=0.6, min_improvement=0.02, score_batch_size=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def registered_model(url: str) -> dict:
    resp = requests.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": "imgcls"}, timeout=10)
    resp.raise_for_status()
    return resp.json()["registered_model"]


def test_promotion_is_visible_through_a_real_tracking_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.chdir(tmp_path)
    paths = Paths(
        store=str(tmp_path / "store"),
        split=str(tmp_path / "split.parquet"),
        reports=str(tmp_path / "reports"),
        cache=str(tmp_path / "cache"),
    )
    write_split(paths, {"dark": 20, "mid": 20, "bright": 20})
    good = paths.model_copy(update={"train_dir": str(tmp_path / "train_good")})
    worse = paths.model_copy(update={"train_dir": str(tmp_path / "train_worse")})
    train_run(tmp_path / "train_good", {"bright": 0.1})
    train_run(tmp_path / "train_worse", {"dark": 0.3, "mid": 0.3, "bright": 0.3})

    assert run(PARAMS, good)["decision"] == "promoted"
    assert run(PARAMS, worse)["decision"] == "rejected"

    model = registered_model(server)
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1", "challenger": "2"}
    by_alias = requests.get(
        f"{server}/api/2.0/mlflow/registered-models/alias", params={"name": "imgcls", "alias": "champion"}, timeout=10
    ).json()["model_version"]
    tags = {t["key"]: t["value"] for t in by_alias["tags"]}
    assert tags["promotion_decision"] == "promoted" and tags["dataset_version"] == "ds-1"
    client = MlflowClient(tracking_uri=server)
    assert client.get_model_version_by_alias("imgcls", "challenger").tags["promotion_decision"] == "rejected"
    # with an HTTP store the lock lives in the project's cache folder
    assert (tmp_path / "cache" / "promote.lock").exists()
