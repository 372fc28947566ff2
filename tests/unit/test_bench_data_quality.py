"""bench.data_quality --quick: real Fashion-MNIST (Debian package) with planted faults through the
real stages; checks the report's shape and that awkward-but-valid files survive (the recall goals
are for the full run, see BENCHMARKS.md)."""

import json

import pytest

from bench import data_quality
from bench.fashion import IDX_DIR


@pytest.mark.skipif(
    not (IDX_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)
def test_quick_bench_scores_every_reason_and_keeps_awkward_files(tmp_path, capsys):
    out = tmp_path / "dq.json"
    assert data_quality.main(["--quick", "--workers", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = data_quality.CLEAN_REASONS + [r for r in data_quality.VALIDATE_REASONS if r not in result["not_run"]]
    assert set(result["reasons"]) == set(expected)
    for reason in expected:
        scores = result["reasons"][reason]
        assert scores["planted"] > 0
        assert isinstance(scores["recall"], float) and 0 <= scores["recall"] <= 1
        assert scores["precision"] is None or 0 <= scores["precision"] <= 1
    assert result["awkward"]["planted"] == 12 and result["awkward"]["kept"] == 12
    assert set(result["seconds"]) == set(result["stages"]) >= {"ingest", "clean"}
    assert "| outlier |" in capsys.readouterr().out
