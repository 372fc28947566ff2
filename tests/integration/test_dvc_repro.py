"""Real `dvc repro` of the data stages in a temporary git repo."""
import pandas as pd

from tests.integration.dvcproject import make_project, sh

DATA_STAGES = ["ingest", "clean", "validate", "split"]


def test_repro_then_noop_then_status_clean(tmp_path):
    root = make_project(tmp_path / "proj", {"ingest": {"sample_upscale": 2}})
    first = sh(["dvc", "repro", DATA_STAGES[-1]], root)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    manifest = pd.read_parquet(root / "data/manifests/ingested.parquet")
    assert len(manifest) == 1797
    second = sh(["dvc", "repro", DATA_STAGES[-1]], root)
    assert "Running stage" not in second.stdout, second.stdout
    assert "up to date" in sh(["dvc", "status", DATA_STAGES[-1]], root).stdout
    sh(["dvc", "push"], root)
    assert any((tmp_path / "proj-remote").rglob("*")), "dvc push left the local remote empty"
