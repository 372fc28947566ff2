"""After a Prefect run, leave the same record `dvc repro` would: dvc.lock names the data and model the
run used (`dvc commit -f`), so `dvc status` is clean, and the cache is pushed when a remote exists."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


class DvcError(RuntimeError):
    """A dvc command failed; the message carries its last error line."""


def is_dvc_repo(root: str | Path = ".") -> bool:
    return (Path(root) / ".dvc").is_dir()


def _dvc(args: Sequence[str], root: Path) -> str:
    # `python -m dvc` runs the dvc of this interpreter, whatever PATH says
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise DvcError(f"dvc {' '.join(args)} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


def pipeline_stages(root: str | Path = ".") -> list[str]:
    dvc_yaml = Path(root) / "dvc.yaml"
    if not dvc_yaml.is_file():
        return []
    return list((yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {}))


def record(stages: Sequence[str], root: str | Path = ".") -> dict:
    """Commit the outputs of the `stages` that ran (only those: committing a stage that was skipped
    would mark stale outputs as matching changed params) and push when a remote is configured."""
    root = Path(root)
    if not is_dvc_repo(root):
        return {"recorded": False, "reason": "not a DVC repository (no .dvc/)"}
    targets = [s for s in stages if s in set(pipeline_stages(root))]
    if not targets:
        return {"recorded": False, "reason": "none of the stages that ran is in dvc.yaml"}
    _dvc(["commit", "--force", "--quiet", *targets], root)
    remotes = _dvc(["remote", "list"], root).strip()
    if remotes:
        _dvc(["push", "--quiet", *targets], root)
    return {"recorded": True, "committed": targets, "pushed": bool(remotes)}
