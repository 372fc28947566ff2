"""Drift watch: the served-input log (bounded, rotating, thread-safe, never failing) and the comparison
with a real prepared store, through check_drift and `imgcls drift`."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli import main
from flows.drift import (
    DRIFT_EXIT,
    InputRecorder,
    check_drift,
    default_log_dir,
    features,
    log_files,
    psi,
    publish_artifact,
    read_log,
    should_retrain,
)
from tasks.common.errors import UserError
from tasks.common.params import Paths
from tasks.common.prepared import write_metadata

SIZE = 32  # the prepared store's image_size


def scene(rng: np.random.Generator, brightness: float = 0.0, contrast: float = 1.0, side: int = 96) -> np.ndarray:
    """A raw RGB 'photo': random base level, a random lighting gradient, sensor noise."""
    yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
    gy, gx = rng.normal(0, 40, 2)
    gray = rng.normal(115, 20) + gy * yy + gx * xx + rng.normal(0, 14, (side, side))
    gray = 128 + contrast * (gray - 128) + brightness
    tint = rng.normal(0, 3, 3)  # slightly coloured: the comparison runs on grayscale
    return np.clip(gray[:, :, None] + tint, 0, 255).astype(np.uint8)


def write_store(root: Path, n: int, seed: int = 0) -> Path:
    """The layout augment writes: raw scenes resized to SIZE, grayscale (channels=1)."""
    rng = np.random.default_rng(seed)
    images = [
        np.asarray(Image.fromarray(scene(rng)).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        for _ in range(n)
    ]
    splits = ["train"] * (n - 20) + ["test"] * 20
    index = pd.DataFrame(
        {
            "row": range(n),
            "image_id": [f"{i:064x}" for i in range(n)],
            "label": ["a", "b"] * (n // 2),
            "label_idx": [0, 1] * (n // 2),
            "split": splits,
            "balance_copy": False,
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", np.stack(images)[:, :, :, None])
    write_metadata(root, index, ["a", "b"], {"image_size": SIZE, "channels": 1, "mean": [0.45], "std": [0.1]})
    return root


def serve(recorder: InputRecorder, n: int, seed: int, **shift) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        assert recorder.record(scene(rng, **shift), label="ab"[i % 2], score=0.9)


@pytest.fixture
def paths(tmp_path) -> Paths:
    paths = Paths(prepared=str(tmp_path / "prepared"), reports=str(tmp_path / "reports"))
    write_store(Path(paths.prepared), 420)
    return paths


def test_features_do_not_depend_on_raw_size_or_colour():
    rng = np.random.default_rng(1)
    raw = scene(rng, side=128)
    big, small = features(raw), features(np.asarray(Image.fromarray(raw).resize((40, 40))))
    assert (big["width"], big["height"], big["channels"]) == (128, 128, 3)
    assert abs(big["brightness"] - small["brightness"]) < 0.01
    assert len(big["thumb"]) == 64
    gray = features(Image.fromarray(raw).convert("L"))
    assert gray["channels"] == 1 and abs(gray["brightness"] - big["brightness"]) < 0.01
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, format="PNG")
    assert features(buf.getvalue()) == big  # the server may hand over the upload's bytes


def test_inputs_like_the_training_set_are_not_drift(paths):
    serve(InputRecorder(default_log_dir(paths)), 200, seed=7)
    report = check_drift(paths, window=200)
    assert report["status"] == "ok", report
    assert not should_retrain(report)
    assert max(report["psi"].values()) < 0.2 and report["mmd"]["p_value"] > 0.01
    assert report["served"] == 200 and report["skipped_lines"] == 0
    assert report["served_size"]["width"]["mean"] == 96 and report["served_label_shares"] == {"a": 0.5, "b": 0.5}
    out = Path(paths.reports) / "drift"
    assert json.loads((out / "report.json").read_text())["status"] == "ok"
    assert (out / "drift.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("shift, moved", [({"brightness": 45}, "brightness"), ({"contrast": 0.4}, "contrast")])
def test_shifted_inputs_are_drift(paths, shift, moved):
    serve(InputRecorder(default_log_dir(paths)), 120, seed=8, **shift)
    report = check_drift(paths, window=120)
    assert report["status"] == "drift" and report["retrain_recommended"]
    assert report["psi"][moved] >= 0.2
    assert should_retrain(report) and should_retrain(report, threshold=0.2)
    assert any(r.startswith(moved) for r in report["reasons"]) and "retrain" in report["recommendation"]


def test_the_window_looks_at_the_latest_inputs_only(paths):
    recorder = InputRecorder(default_log_dir(paths))
    serve(recorder, 60, seed=9, brightness=60)  # an old bad spell
    serve(recorder, 100, seed=10)
    assert check_drift(paths, window=100)["status"] == "ok"
    assert check_drift(paths, window=160)["status"] == "drift"


def test_threshold_decides_on_psi():
    report = {"status": "ok", "threshold": 0.2, "alpha": 0.01, "psi": {"brightness": 0.15}, "mmd": {"p_value": 0.5}}
    assert not should_retrain(report)
    assert should_retrain(report, threshold=0.1)
    assert should_retrain(report | {"mmd": {"p_value": 0.001}})
    assert not should_retrain(report | {"status": "insufficient_data", "psi": {"brightness": 9.0}})


def test_psi():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    assert psi(x, rng.normal(size=2000)) < 0.02
    assert psi(x, rng.normal(0.8, 1, size=2000)) > 0.25
    assert psi(np.full(100, 0.5), np.full(50, 0.5)) == pytest.approx(0.0)


def test_too_few_inputs_or_no_training_data_give_no_verdict(paths, tmp_path):
    serve(InputRecorder(default_log_dir(paths)), 5, seed=3, brightness=80)
    report = check_drift(paths)
    assert report["status"] == "insufficient_data" and not should_retrain(report)
    serve(InputRecorder(default_log_dir(paths)), 40, seed=4)
    missing = paths.model_copy(update={"prepared": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="augment"):
        check_drift(missing)
    assert check_drift(missing, missing_ok=True)["status"] == "no_training_data"


def test_log_rotation_is_bounded_and_keeps_the_newest(tmp_path):
    recorder = InputRecorder(tmp_path / "log", max_bytes=2500, backups=2)
    tiny = np.full((10, 10), 100, np.uint8)
    for i in range(200):
        assert recorder.record(tiny, label=str(i))
    files = log_files(tmp_path / "log")
    assert [f.name for f in files] == ["inputs.jsonl", "inputs.1.jsonl", "inputs.2.jsonl"]
    assert all(f.stat().st_size <= 2500 for f in files)
    records, skipped = read_log(tmp_path / "log", 10_000)
    labels = [int(r["label"]) for r in records]
    assert skipped == 0 and labels[-1] == 199 and labels == list(range(labels[0], 200))
    assert len(labels) < 200  # the oldest were dropped
    assert [int(r["label"]) for r in read_log(tmp_path / "log", 7)[0]] == list(range(193, 200))


def test_corrupt_log_lines_are_skipped(tmp_path):
    folder = tmp_path / "log"
    recorder = InputRecorder(folder)
    for i in range(3):
        recorder.record(np.full((8, 8), 50 * i, np.uint8), label=str(i))
    log = folder / "inputs.jsonl"
    lines = log.read_text().splitlines()
    lines.insert(1, "not json at all")
    lines.insert(2, json.dumps({"brightness": 0.5}))  # valid JSON, not a record
    lines.insert(3, json.dumps(json.loads(lines[0]) | {"thumb": [1, 2]}))  # wrong embedding size
    log.write_text("\n".join(lines) + "\n" + lines[-1][:40])  # and a torn last line
    records, skipped = read_log(folder, 100)
    assert [r["label"] for r in records] == ["0", "1", "2"] and skipped == 4


def test_recording_never_raises(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the log folder should be")
    for recorder, bad in (
        (InputRecorder(tmp_path / "log"), None),
        (InputRecorder(tmp_path / "log"), b"junk"),
        (InputRecorder(tmp_path / "log"), np.zeros((0, 3))),
        (InputRecorder(blocked), np.zeros((4, 4), np.uint8)),
    ):
        assert recorder.record(bad) is False and recorder.errors == 1


def test_concurrent_recording_writes_whole_lines(tmp_path):
    recorder = InputRecorder(tmp_path / "log", max_bytes=20_000, backups=50)
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)

    def work(k: int) -> None:
        for i in range(40):
            recorder.record(image, label=f"{k}-{i}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records, skipped = read_log(tmp_path / "log", 10_000)
    assert skipped == 0 and len({r["label"] for r in records}) == 160


def test_artifact_is_only_created_inside_a_prefect_run():
    assert publish_artifact({"status": "ok"}) is False


def test_cli_exit_code_says_retrain(project, capsys):
    params = project.write_params(paths={"prepared": "prepared", "reports": "reports"})
    write_store(project.root / "prepared", 420)
    assert main(["drift", "--params", str(params)]) == 0  # nothing served yet
    assert "insufficient_data" in capsys.readouterr().out
    serve(InputRecorder(project.root / "reports/serve/inputs"), 80, seed=5, brightness=50)
    assert main(["drift", "--params", str(params), "--window", "80", "--threshold", "0.25"]) == DRIFT_EXIT
    out = capsys.readouterr().out
    assert "retrain recommended" in out and "brightness: PSI" in out
    assert (project.root / "reports/drift/report.json").is_file()
    assert main(["drift", "--params", str(params), "--window", "0"]) == 2


@pytest.mark.slow
def test_artifact_inside_a_flow_run():
    """Prefect's temporary API takes up to a minute to start on a busy CI box: slow-marked."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    report = {
        "status": "ok",
        "served": 0,
        "window": 5,
        "skipped_lines": 0,
        "threshold": 0.2,
        "alpha": 0.01,
        "notes": ["0 served inputs"],
    }

    @flow
    def watch() -> bool:
        return publish_artifact(report)

    with prefect_test_harness(server_startup_timeout=180):
        assert watch() is True
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["imgcls-drift"])))
        assert found and found[0].data.startswith("# Input drift: ok")
