"""A throw-away copy of this project in its own git + DVC repo, for real `dvc repro` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CODE = [
    "tasks",
    "models",
    "flows",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "data/inbox/.gitkeep",
    "data/feedback/.gitkeep",
    "data/label_decisions.csv",
]


def project_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(root),
            "GIT_AUTHOR_NAME": "imgcls tests",
            "GIT_AUTHOR_EMAIL": "tests@imgcls.invalid",
            "GIT_COMMITTER_NAME": "imgcls tests",
            "GIT_COMMITTER_EMAIL": "tests@imgcls.invalid",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "DVC_NO_ANALYTICS": "1",
        }
    )
    return env


def sh(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=root, env=project_env(root), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def make_project(root: Path, params_overrides: dict | None = None) -> Path:
    """Copy the code into `root`, apply params overrides (section -> keys), git init + dvc init + commit."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in CODE:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in (params_overrides or {}).items():
        params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    sh(["git", "init", "-q", "-b", "main"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)
    sh(["dvc", "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote")], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "project"], root)
    return root
