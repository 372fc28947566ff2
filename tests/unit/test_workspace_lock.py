"""One run at a time per workspace, with real processes: a second run is refused naming the holder,
the holder's own stages and children share its lock, a killed holder frees it, and a waiting run
gets it when the holder finishes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.common.errors import UserError
from tasks.common.workspace_lock import HOLDER_ENV, WAIT_ENV, WorkspaceBusy, lock_path, workspace_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from tasks.common.workspace_lock import workspace_lock\n"
    "with workspace_lock(sys.argv[1], command='holder --for-tests'):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.readline()\n"
)
TRY = (
    "import sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from tasks.common.workspace_lock import workspace_lock\n"
    "with workspace_lock(sys.argv[1]):\n"
    "    print('got it')\n"
)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (HOLDER_ENV, WAIT_ENV)} | {"PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def holding_process(cache: Path):
    """Another process holding the workspace lock of `cache` until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(cache)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(30)


def try_in_child(cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(cache)], capture_output=True, text=True, env=env, timeout=60)


def test_a_second_stage_run_is_refused_at_once_naming_the_holder(tmp_path):
    cache = tmp_path / "cache"
    params = tmp_path / "params.yaml"
    params.write_text(
        f"paths:\n  validated: {tmp_path}/validated.parquet\n  split: {tmp_path}/split.parquet\n"
        f"  reports: {tmp_path}/reports\n  cache: {cache}\nsplit: {{}}\n"
    )
    with holding_process(cache) as holder:
        started = time.monotonic()
        refused = subprocess.run(
            [sys.executable, "-m", "tasks.split", "--params", str(params)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=120,
        )
        assert refused.returncode == 2
        err = refused.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: the workspace is busy")
        assert f"pid {holder.pid}" in err and "holder --for-tests" in err and WAIT_ENV in err
        assert not (tmp_path / "reports").exists()  # the stage did not start
        assert time.monotonic() - started < 60
        with pytest.raises(WorkspaceBusy, match=f"pid {holder.pid}"):
            with workspace_lock(cache, wait=0):
                pass
    # the holder finished: the next run gets the workspace, and the record it left is gone
    assert lock_path(cache).read_text() == ""
    with workspace_lock(cache, command="me") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_holder_re_enters_and_its_children_inherit_but_strangers_do_not(tmp_path):
    cache = tmp_path / "cache"
    with workspace_lock(cache, command="imgcls run --params params.yaml") as path:
        with workspace_lock(cache):  # a stage run in-process by the flow
            assert json.loads(path.read_text())["command"] == "imgcls run --params params.yaml"
        assert os.environ[HOLDER_ENV] == f"{os.getpid()}:{path}"
        child = try_in_child(cache, os.environ | {"PYTHONPATH": str(ROOT)})
        assert child.returncode == 0 and child.stdout.strip() == "got it", child.stderr[-2000:]
        stranger = try_in_child(cache, clean_env())
        assert stranger.returncode != 0 and f"pid {os.getpid()}" in stranger.stderr
        # a copied variable naming a holder that is not the one in the lock file is not trusted
        forged = try_in_child(cache, clean_env() | {HOLDER_ENV: f"1:{path}"})
        assert forged.returncode != 0 and "workspace is busy" in forged.stderr
    assert HOLDER_ENV not in os.environ
    assert try_in_child(cache, clean_env()).returncode == 0


def test_a_killed_holder_frees_the_workspace(tmp_path):
    cache = tmp_path / "cache"
    with holding_process(cache) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with workspace_lock(cache, wait=0):
            pass


def test_waiting_gets_the_workspace_when_the_holder_finishes(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with holding_process(cache) as holder:
        threading.Timer(1.0, holder.stdin.close).start()
        monkeypatch.setenv(WAIT_ENV, "30")
        started = time.monotonic()
        with workspace_lock(cache):
            waited = time.monotonic() - started
    assert 0.5 < waited < 30
    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(UserError, match=f"{WAIT_ENV}='soon': expected a number of seconds"):
        with workspace_lock(cache):
            pass
