"""Recording a Prefect run in DVC: a real `dvc` in a temporary, git-less DVC project."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from flows.dvc_record import record

DVC_YAML = {
    "stages": {
        "make": {"cmd": "python make.py", "deps": ["make.py"], "outs": ["out.txt"]},
        "later": {"cmd": "python later.py", "deps": ["later.py", "out.txt"], "outs": ["later.txt"]},
    }
}


def dvc(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_not_a_dvc_repo_records_nothing(tmp_path):
    assert record(["make"], tmp_path)["recorded"] is False


def test_commit_makes_status_clean_for_the_stages_that_ran_and_pushes(tmp_path):
    dvc("init", "--no-scm", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "make.py").write_text("open('out.txt', 'w').write('made\\n')\n")
    (tmp_path / "later.py").write_text("open('later.txt', 'w').write('later\\n')\n")
    remote = tmp_path.parent / f"{tmp_path.name}-remote"
    dvc("remote", "add", "-d", "store", str(remote), cwd=tmp_path)
    # what the Prefect flow does: run the stage code directly, not through `dvc repro`
    subprocess.run([sys.executable, "make.py"], cwd=tmp_path, check=True)

    result = record(["ingest", "make"], tmp_path)

    assert result == {"recorded": True, "committed": ["make"], "pushed": True}
    status = json.loads(dvc("status", "--json", "make", cwd=tmp_path) or "{}")
    assert status == {}
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"make"}  # the stage that did not run is not marked up to date
    assert lock["stages"]["make"]["outs"][0]["md5"]
    assert any(p.is_file() for p in remote.rglob("*"))
