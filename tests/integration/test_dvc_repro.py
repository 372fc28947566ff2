"""Real DVC on the bundled digits in a temporary git repo, driven the way README tells a user to: the
venv is not activated, commands are typed as `.venv/bin/dvc ...`. One pipeline run serves every check:
repro, a no-op second repro, a clean status, metrics, push, then two experiments compared through
`dvc exp show --json` and `dvc metrics diff`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd

from tasks.stages import STAGES
from tests.helpers.dvc_project import ROOT, make_project, project_env

# the sample at 16 px, two epochs and the kernel suspect-label model: every stage runs for real, quickly
SMALL = {
    "ingest": {"sample_upscale": 2},
    "validate": {"suspect_label": {"model": "kernel"}},
    "augment": {"image_size": 16},
    "train": {"epochs": 2, "num_workers": 0},
    "promote": {"floor": 0.5},
}


def readme_dvc_commands() -> list[str]:
    block = re.search(r"## DVC: experiments.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith(".venv/bin/dvc")]


def user_venv(root: Path) -> None:
    """A real venv at root/.venv that sees this interpreter's packages, with a `dvc` console script:
    what `make setup` leaves in a clone, without installing anything."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    site = next((root / ".venv/lib").glob("python*/site-packages"))
    (site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = root / ".venv/bin/dvc"
    script.write_text(f"#!{root}/.venv/bin/python\nimport sys\nfrom dvc.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


def user_shell(command: str, root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in project_env(root).items() if k != "PYTHONPATH"}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH: a bare `python` here is the system one
    result = subprocess.run(command, shell=True, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def experiment_metrics(shown: list) -> dict[str, dict]:
    """name -> metrics of every experiment in `dvc exp show --json` output."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs", []):
                files = (rev.get("data") or {}).get("metrics") or {}
                data = files.get("reports/evaluate/metrics.json", {}).get("data")
                if data:
                    found[rev.get("name") or rev["rev"]] = data
    return found


def registered_versions(root: Path) -> list[str]:
    code = (
        "from mlflow import MlflowClient\n"
        "print(','.join(str(v.version) for v in MlflowClient().search_model_versions(\"name='imgcls'\")))"
    )
    result = subprocess.run(
        [str(root / ".venv/bin/python"), "-c", code],
        cwd=root,
        env=project_env(root),
        capture_output=True,
        text=True,
        check=True,
    )
    return [v for v in result.stdout.strip().split(",") if v]


def test_readme_dvc_commands_repro_noop_push_and_two_experiments(tmp_path):
    commands = readme_dvc_commands()
    assert any(c.startswith(".venv/bin/dvc exp run") for c in commands), commands
    root = make_project(tmp_path / "proj", SMALL)
    user_venv(root)

    first = user_shell(".venv/bin/dvc repro", root)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert len(pd.read_parquet(root / "data/manifests/ingested.parquet")) == 1797
    metrics = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert metrics["test/acc"] > 0.5 and "baseline/test/acc" in metrics
    decision = json.loads((root / "reports/promote/decision.json").read_text())
    assert decision["decision"] == "promoted" and decision["aliases"]["champion"] == "1"
    assert "Running stage" not in user_shell(".venv/bin/dvc repro", root).stdout
    assert "up to date" in user_shell(".venv/bin/dvc status", root).stdout
    assert "test/acc" in user_shell(".venv/bin/dvc metrics show --json", root).stdout
    lock = (root / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in STAGES)
    user_shell(".venv/bin/dvc push", root)
    assert any((tmp_path / "proj-remote").rglob("*")), "dvc push left the local remote empty"

    # the user records the run as README says: dvc.lock and the small metrics/plot files are git-tracked
    user_shell("git add -A && git commit -qm 'baseline run'", root)
    assert "reports/evaluate/metrics.json" in user_shell("git ls-files reports", root).stdout
    # one epoch each: an experiment only has to change the metrics, not train well
    user_shell(".venv/bin/dvc exp run -n fewer-px -S augment.image_size=12 -S train.epochs=1", root)
    user_shell(".venv/bin/dvc exp run -n lower-lr -S train.lr=0.0003 -S train.epochs=1", root)
    metrics = experiment_metrics(json.loads(user_shell(".venv/bin/dvc exp show --json", root).stdout))
    assert {"fewer-px", "lower-lr"} <= set(metrics), metrics.keys()
    assert all(0.0 < metrics[name]["test/acc"] <= 1.0 for name in ("fewer-px", "lower-lr"))
    assert metrics["fewer-px"] != metrics["lower-lr"]
    table = user_shell("COLUMNS=250 .venv/bin/dvc exp show --only-changed --no-pager", root).stdout
    assert "fewer-px" in table and "lower-lr" in table
    # the workspace holds the last experiment's results; HEAD's metrics load from git
    diff = json.loads(user_shell(".venv/bin/dvc metrics diff --all --json", root).stdout)
    assert "test/acc" in diff.get("reports/evaluate/metrics.json", {}), diff
    # experiments are judged (decision.json) but never touch the production registry
    assert json.loads((root / "reports/promote/decision.json").read_text())["decision"] == "not_registered"
    assert registered_versions(root) == ["1"]
