"""Values that make no sense fail params validation, as one line naming the key, before a stage
deletes anything or opens an MLflow run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.common.params import ParamsError, validate_file

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    ("train", "network", "resnet_smal", "did you mean 'resnet_small'?"),
    ("train", "network", "convnext_tinny", "did you mean 'convnext_tiny'?"),
    ("train", "limit_train_batches", -3, "an integer >= 1) or a fraction in (0, 1]"),
    ("train", "limit_train_batches", 0, "an integer >= 1"),
    ("train", "limit_val_batches", 1.5, "a fraction in (0, 1]"),
    ("train", "epochs", 0, "greater than or equal to 1"),
    ("train", "batch_size", -8, "a batch size >= 1 or 'auto'"),
    ("train", "batch_size", "big", "a batch size >= 1 or 'auto'"),
    ("train", "devices", 0, "a device count >= 1 or 'auto'"),
    ("train", "devices", -1, "a device count >= 1 or 'auto'"),
    ("train", "num_workers", -1, "must be a worker count >= 0 or 'auto'"),
    ("train", "seed", -5, "greater than or equal to 0"),
    ("train", "checkpoint_every_n_steps", 0, "greater than or equal to 1"),
    ("train", "max_time_minutes", 0, "greater than 0"),
    ("train", "class_weights", [1.0, -1.0], "weights >= 0"),
    ("train", "experiment", "", "at least 1 character"),
    ("augment", "image_size", 0, "greater than or equal to 8"),
    ("evaluate", "top_k", 0, "greater than or equal to 1"),
    ("evaluate", "calibration_bins", -1, "greater than or equal to 1"),
    ("promote", "score_batch_size", 0, "greater than or equal to 1"),
    ("promote", "floor", 1.5, "less than or equal to 1"),
]


def write(tmp_path: Path, section: str, key: str, value) -> Path:
    path = tmp_path / "params.yaml"
    paths = {
        "prepared": str(tmp_path / "prepared"),
        "split": str(tmp_path / "split.parquet"),
        "train_dir": str(tmp_path / "train"),
        "reports": str(tmp_path / "reports"),
        "cache": str(tmp_path / "cache"),
    }
    path.write_text(yaml.safe_dump({"paths": paths, section: {key: value}}), encoding="utf-8")
    return path


@pytest.mark.parametrize("section, key, value, message", BAD, ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD])
def test_each_bad_value_is_one_line_naming_the_key(tmp_path, section, key, value, message):
    with pytest.raises(ParamsError) as err:
        validate_file(write(tmp_path, section, key, value))
    text = str(err.value)
    assert "\n" not in text and "[+" not in text, text  # one error, not one per member of a union type
    assert f": {section}.{key}: " in text and message in text, text


def test_known_networks_pass(tmp_path):
    for name in ("resnet_small", "resnet_tiny", "resnet18", "resnet18.a1_in1k"):
        validate_file(write(tmp_path, "train", "network", name))
    for limit in (1, 3, 0.25, 1.0):
        validate_file(write(tmp_path, "train", "limit_train_batches", limit))


def test_train_on_a_misspelt_network_exits_2_before_touching_anything(tmp_path):
    params = write(tmp_path, "train", "network", "resnet_smal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")} | {
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tasks.train", "--params", str(params)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "train.network" in err and "resnet_small" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no train_dir, no mlflow.db, no lock
