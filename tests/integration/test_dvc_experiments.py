"""README's DVC commands as a user types them (venv not activated), and experiments compared through
`dvc exp show --json`: the metrics each experiment produced are read back per experiment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers.dvc_project import ROOT, make_project, project_env

SMALL = {
    "ingest": {"sample_upscale": 2},
    "augment": {"image_size": 16},
    "train": {"epochs": 1, "num_workers": 0},
    "promote": {"floor": 0.3},
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


def test_readme_dvc_commands_and_two_experiments_compared(tmp_path):
    commands = readme_dvc_commands()
    assert any(c.startswith(".venv/bin/dvc repro") for c in commands), commands
    root = make_project(tmp_path / "proj", SMALL)
    user_venv(root)

    user_shell(".venv/bin/dvc repro", root)
    assert "test/acc" in user_shell(".venv/bin/dvc metrics show --json", root).stdout
    # the user records the run: dvc.lock and the small metrics/plot files are git-tracked
    user_shell("git add -A && git commit -qm 'baseline run'", root)
    assert "reports/evaluate/metrics.json" in user_shell("git ls-files reports", root).stdout

    user_shell(".venv/bin/dvc exp run -n fewer-px -S augment.image_size=12", root)
    user_shell(".venv/bin/dvc exp run -n lower-lr -S train.lr=0.0003", root)
    shown = json.loads(user_shell(".venv/bin/dvc exp show --json", root).stdout)
    metrics = experiment_metrics(shown)
    assert {"fewer-px", "lower-lr"} <= set(metrics), metrics.keys()
    for name in ("fewer-px", "lower-lr"):
        assert 0.0 < metrics[name]["test/acc"] <= 1.0
    assert metrics["fewer-px"] != metrics["lower-lr"]
    table = user_shell(".venv/bin/dvc exp show --only-changed --no-pager", root).stdout
    assert "fewer-px" in table and "lower-lr" in table
    diff = json.loads(user_shell(".venv/bin/dvc metrics diff HEAD fewer-px --json", root).stdout)
    assert "test/acc" in diff.get("reports/evaluate/metrics.json", {}), diff
    assert os.path.exists(root / ".venv/bin/python")
