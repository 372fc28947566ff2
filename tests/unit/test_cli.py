"""The `imgcls` command line: user mistakes are one line on stderr and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from flows.cli import main
from tests.helpers.brightness_models import save
from tests.helpers.images import png_bytes


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "params file not found"),
        ("paths: [unclosed\n", "not valid YAML"),
        ("trian:\n  epochs: 1\n", "trian: unknown section"),
        ("paths:\n  bogus: x\n", "paths.bogus: Extra inputs are not permitted"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["run", "--force"], ["schedule", "--cron", "0 3 * * *"]])
def test_bad_params_is_one_line_and_exit_2(tmp_path, capsys, command, text, message):
    params = tmp_path / "params.yaml"
    if text is not None:
        params.write_text(text)
    assert main([*command, "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_schedule_without_a_prefect_server_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("paths: {}\n")
    assert main(["schedule", "--cron", "0 3 * * *", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: schedule needs a running Prefect server") and err.count("\n") == 1


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--params", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {tmp_path / 'nope.yaml'}: params file not found\n"


def test_predict_writes_the_csv(tmp_path, capsys):
    model = save(tmp_path / "model")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(250))
    (tmp_path / "imgs" / "b.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "imgs"),
                str(tmp_path / "imgs" / "*.png"),
                "--model",
                model,
                "--out",
                str(out),
                "--batch-size",
                "1",
            ]
        )
        == 0
    )
    df = pd.read_csv(out, keep_default_na=False)
    assert df["label"].tolist() == ["bright", ""] and df["error"].iloc[1] != ""
    assert "2 images, 1 could not be predicted" in capsys.readouterr().out


def test_predict_with_a_missing_model_is_one_line(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png_bytes(3))
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load model") and err.count("\n") == 1


def test_bad_batch_size_is_one_line(tmp_path, capsys):
    model = save(tmp_path / "model")
    (tmp_path / "a.png").write_bytes(png_bytes(3))
    capsys.readouterr()  # MLflow's own warnings while saving the test model
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a.png"),
                "--model",
                model,
                "--batch-size",
                "0",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == "error: batch size must be at least 1, got 0\n"
