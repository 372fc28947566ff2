"""`imgcls export --format onnx`: a tiny real model, registered in a sqlite MLflow registry, exported
to ONNX and checked against PyTorch on the prepared store's test split; the ONNX file runs in
onnxruntime and labels PNGs like the pyfunc model does."""

from __future__ import annotations

import json

import mlflow
import mlflow.pyfunc
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from flows.cli import main
from flows.export import parity_path
from models.networks import build_network
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, metadata
from models.predictor import save_model_files
from models.pyfunc import log_pyfunc, save_pyfunc
from tasks.common.images import decode, to_array
from tests.helpers.images import png_bytes
from tests.helpers.prepared_store import STRIPE_CLASSES, make_prepared_store

NAME = "tiny"
SIZE, CHANNELS = 16, 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A prepared store (test split 3 x 5 images), a tiny RGB resnet with test-time flip saved as a
    pyfunc folder and registered as tiny/1 with alias champion, and a params file naming the store."""
    root = tmp_path_factory.mktemp("export")
    prepared = make_prepared_store(root / "prepared", {"train": 1, "val": 1, "test": 5}, size=SIZE, channels=CHANNELS)
    stats = json.loads((prepared / "stats.json").read_text()) | {"test_time_flip": True}
    torch.manual_seed(0)
    files = save_model_files(
        root / "files", "resnet_tiny", build_network("resnet_tiny", 3, CHANNELS), STRIPE_CLASSES, stats
    )
    example = np.zeros((SIZE, SIZE, CHANNELS), dtype=np.uint8)
    save_pyfunc(root / "model", files, example)
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run() as run:
            info = log_pyfunc(files, example)
        version = mlflow.register_model(info.model_uri, NAME)
        MlflowClient(uri).set_registered_model_alias(NAME, "champion", version.version)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"prepared": str(prepared)}, "promote": {"model_name": NAME}}))
    return {"root": root, "uri": uri, "params": str(params), "run_id": run.info.run_id, "model": root / "model"}


def test_exports_the_champion_checks_parity_and_records_it_on_the_version(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project["uri"])
    out = tmp_path / "onnx" / "tiny.onnx"
    # no --model: the champion of promote.model_name
    assert main(["export", "--format", "onnx", "--params", project["params"], "--out", str(out)]) == 0
    assert "ONNX matches PyTorch on 15 test images" in capsys.readouterr().out

    report = json.loads(parity_path(out).read_text())
    assert report["passed"] and report["images"] == 15 and report["split"] == "test"
    assert report["max_abs_diff"] <= 1e-4 and report["label_agreement"] == 1.0 and report["max_diff_bound"] == 1e-4
    assert report["registry"] == {"name": NAME, "version": "1", "run_id": project["run_id"]}
    assert report["input"] == {"name": "images", "dtype": "uint8", "shape": ["batch", SIZE, SIZE, CHANNELS]}

    # the file loads in onnxruntime on its own and describes itself
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == (INPUT_NAME, "tensor(uint8)", [SIZE, SIZE, CHANNELS])
    assert (outp.name, outp.type, outp.shape[1:]) == (OUTPUT_NAME, "tensor(float)", [3])
    meta = metadata(sess)
    assert meta["classes"] == STRIPE_CLASSES and meta["test_time_flip"] is True and meta["image_size"] == SIZE

    # from PNG files: the same labels and scores as the registered pyfunc model
    pngs = [png_bytes(v, size=21, mode=m) for v, m in ((20, "L"), (120, "RGB"), (250, "L"))]
    arrays = np.stack([to_array(decode(b), SIZE, CHANNELS) for b in pngs])
    proba = sess.run([OUTPUT_NAME], {INPUT_NAME: arrays})[0]
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    paths = []
    for i, data in enumerate(pngs):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    rows = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(pd.DataFrame({"image": list(map(str, paths))}))
    assert rows["label"].tolist() == [STRIPE_CLASSES[j] for j in proba.argmax(1)]
    assert np.allclose(rows["score"], proba.max(1), atol=1e-4)

    # logged to the version's run and tagged on the version
    client = MlflowClient(project["uri"])
    logged = {a.path for a in client.list_artifacts(project["run_id"], "onnx")}
    assert logged == {"onnx/tiny.onnx", "onnx/tiny.parity.json"}
    tags = client.get_model_version(NAME, "1").tags
    assert tags["onnx"] == f"runs:/{project['run_id']}/onnx/tiny.onnx"
    assert float(tags["onnx_max_abs_diff"]) <= 1e-4 and tags["onnx_label_agreement"] == "1.0000"
    assert tags["onnx_parity_images"] == "15"


def test_a_bound_nothing_can_meet_fails_in_one_line_and_keeps_no_onnx_file(project, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code = main(
        [
            "export",
            "--params",
            project["params"],
            "--model",
            str(project["model"]),
            "--out",
            str(out),
            "--max-diff",
            "-1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: ONNX export does not match PyTorch on 15 test images: max |probability difference|")
    assert "> bound -1" in err and "labels differ" not in err
    assert not out.exists() and not list(tmp_path.glob(".*.onnx*"))
    report = json.loads(parity_path(out).read_text())
    assert report["passed"] is False and report["label_agreement"] == 1.0 and "registry" not in report


@pytest.mark.parametrize(
    "model, message",
    [
        ("models:/tiny@nobody", "model 'tiny' has no alias 'nobody'"),
        ("models:/tiny/7", "model 'tiny' has no version 7"),
        ("models:/tiny/latest", "give a registry model as models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("no/such/folder", "no/such/folder: no such model folder or file"),
    ],
)
def test_a_model_that_is_not_there_is_one_line(project, tmp_path, monkeypatch, capsys, model, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project["uri"])
    assert main(["export", "--params", project["params"], "--model", model, "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_prepared_store_of_another_size_is_refused_before_exporting(project, tmp_path, capsys):
    other = make_prepared_store(tmp_path / "prepared", {"train": 1, "val": 1, "test": 1}, size=20, channels=CHANNELS)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"prepared": str(other)}}))
    assert (
        main(["export", "--params", str(params), "--model", str(project["model"]), "--out", str(tmp_path / "m.onnx")])
        == 2
    )
    err = capsys.readouterr().err
    assert "test images are (20, 20, 3) but the model takes (16, 16, 3)" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
