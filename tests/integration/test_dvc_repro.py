"""Real `dvc repro` of the whole pipeline on the bundled digits, in a temporary git repo."""
import json

import pandas as pd

from tasks.stages import STAGES
from tests.helpers.dvc_project import make_project, sh

# the sample at 16 px and two epochs: every stage runs for real, in about a minute
SMALL = {"ingest": {"sample_upscale": 2}, "augment": {"image_size": 16},
         "train": {"epochs": 2, "num_workers": 0}, "promote": {"floor": 0.5}}


def test_repro_then_noop_then_status_clean(tmp_path):
    root = make_project(tmp_path / "proj", SMALL)
    first = sh(["dvc", "repro"], root)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert len(pd.read_parquet(root / "data/manifests/ingested.parquet")) == 1797
    metrics = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert metrics["test/acc"] > 0.5 and "baseline/test/acc" in metrics
    decision = json.loads((root / "reports/promote/decision.json").read_text())
    assert decision["decision"] == "promoted" and decision["aliases"]["champion"] == "1"

    second = sh(["dvc", "repro"], root)
    assert "Running stage" not in second.stdout, second.stdout
    assert "up to date" in sh(["dvc", "status"], root).stdout
    shown = sh(["dvc", "metrics", "show", "--json"], root).stdout
    assert "test/acc" in shown
    lock = (root / "dvc.lock").read_text()
    for stage in STAGES:
        assert f"  {stage}:" in lock
    sh(["dvc", "push"], root)
    assert any((tmp_path / "proj-remote").rglob("*")), "dvc push left the local remote empty"
