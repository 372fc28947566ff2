"""The pyfunc model a training run logs, loaded back through mlflow.pyfunc from the sqlite store:
paths and base64 bytes in, label/score/top_k out, a bad image costing only its own row."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from PIL import Image

from models.predictor import load_predictor
from tasks.common.images import decode, to_array
from tasks.train import Params, run
from tests.helpers.prepared_store import BRIGHTNESS_CLASSES as CLASSES
from tests.helpers.prepared_store import make_project


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{root}/mlflow.db"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        paths = make_project(root, per_split={"train": 10, "val": 3, "test": 1})
        summary = run(Params(epochs=2, batch_size=8, lr=0.01, num_workers=0), paths)
    mlflow.set_tracking_uri(uri)
    return root, uri, summary, paths


def png(value: int, size=(20, 24), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_with_paths_base64_and_a_bad_row(trained, tmp_path):
    root, uri, summary, paths = trained
    model = mlflow.pyfunc.load_model(summary["model_uri"])
    dark = tmp_path / "dark.png"
    dark.write_bytes(png(45))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(png(45)[:30])
    images = [str(dark), base64.b64encode(png(210, mode="RGB")).decode(), str(corrupt), "no such file", str(dark)]
    out = model.predict(pd.DataFrame({"image": images}))

    assert list(out.columns) == ["label", "score", "top_k", "error"] and len(out) == 5
    good = out.iloc[[0, 1, 4]]
    assert (good["error"] == "").all() and good["label"].isin(CLASSES).all()
    assert good["score"].between(0, 1).all()
    ranked = json.loads(good["top_k"].iloc[0])
    assert [label for label, _ in ranked] and ranked[0] == [
        good["label"].iloc[0],
        pytest.approx(good["score"].iloc[0], abs=1e-6),
    ]
    assert sorted(label for label, _ in ranked) == sorted(CLASSES)
    for bad in (2, 3):
        assert out["label"][bad] == "" and math.isnan(out["score"][bad]) and out["error"][bad]
    assert "DecodeError" in out["error"][2] and "not an existing file" in out["error"][3]

    # the same preprocessing as the predictor on decoded arrays: identical scores
    predictor = load_predictor(paths.train_dir)
    array = to_array(decode(dark), predictor.image_size, predictor.channels)
    proba = predictor.predict_proba(array[None])[0]
    assert out["label"][0] == CLASSES[int(proba.argmax())]
    assert out["score"][0] == pytest.approx(float(proba.max()), abs=1e-5)


def test_the_saved_copy_and_the_logged_model_agree(trained, tmp_path):
    root, uri, summary, paths = trained
    df = pd.DataFrame({"image": [base64.b64encode(png(v)).decode() for v in (40, 128, 220)]})
    logged = mlflow.pyfunc.load_model(summary["model_uri"]).predict(df)
    saved = mlflow.pyfunc.load_model(str(Path(paths.train_dir) / "model")).predict(df)
    pd.testing.assert_frame_equal(logged, saved)


def test_loads_and_predicts_from_a_plain_python_session(trained, tmp_path):
    root, uri, summary, paths = trained
    script = (
        "import base64, sys, mlflow.pyfunc, pandas as pd\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"model = mlflow.pyfunc.load_model({summary['model_uri']!r})\n"
        "out = model.predict(pd.DataFrame({'image': [sys.argv[1], 'garbage']}))\n"
        "print(out.to_json(orient='records'))\n"
    )
    image = tmp_path / "bright.png"
    image.write_bytes(png(220))
    # an unrelated folder and no PYTHONPATH: our code must come from the model itself
    result = subprocess.run(
        [sys.executable, "-c", script, str(image)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert rows[0]["label"] in CLASSES and rows[0]["error"] == ""
    assert rows[1]["label"] == "" and rows[1]["error"]
