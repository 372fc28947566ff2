from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory, with a writer for its params.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")

    class Project:
        root = tmp_path

        @staticmethod
        def write_params(**sections) -> Path:
            path = tmp_path / "params.yaml"
            path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
            return path

    return Project()
