"""One run at a time per workspace. `imgcls run` (the Prefect flow) and every `python -m tasks.<stage>`
(which is what `dvc repro` and `imgcls stage` run) hold an exclusive flock on <paths.cache>/workspace.lock
while they work, so two runs never write the same manifests, stores and checkpoints at once.

- A second run refuses at once with one line naming the holder's pid and command. To wait instead,
  set IMGCLS_LOCK_WAIT to a number of seconds: it then waits up to that long for the holder to finish.
- The kernel releases a flock when its holder dies, so a crash (even SIGKILL) never wedges the workspace.
- Re-entrant: a process that holds the lock can take it again (the flow runs its stages in-process),
  and the processes it spawns inherit it through IMGCLS_WORKSPACE_LOCK ("<pid>:<lock path>", set while
  the lock is held), so a stage or dvc command started by the holder does not deadlock on it.
- `dvc exp run --temp` / queued experiments run in their own copy of the workspace: a lock of their own."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.common.errors import UserError

LOCK_NAME = "workspace.lock"
HOLDER_ENV = "IMGCLS_WORKSPACE_LOCK"
WAIT_ENV = "IMGCLS_LOCK_WAIT"
_POLL_SECONDS = 0.2


class _Hold:
    """This process's hold on one lock: the open locked file, HOLDER_ENV before it, how many holders deep."""

    def __init__(self, handle, previous_env: str | None):
        self.handle, self.previous_env, self.depth = handle, previous_env, 1


_held: dict[str, _Hold] = {}  # resolved lock path -> this process's hold on it
_guard = threading.RLock()


class WorkspaceBusy(UserError):
    """Another process holds the workspace."""


def lock_path(cache: str | Path) -> Path:
    return Path(cache) / LOCK_NAME


def wait_seconds() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also catches nan
        raise UserError(f"{WAIT_ENV}={raw!r}: expected a number of seconds >= 0")
    return seconds


@contextlib.contextmanager
def workspace_lock(cache: str | Path, command: str | None = None, wait: float | None = None) -> Iterator[Path]:
    """Hold the workspace lock of `cache` (paths.cache) for the body. `command` is what a refused run
    is told the holder is doing (default: this process's command line); `wait` is how many seconds to
    wait for a busy workspace (default: IMGCLS_LOCK_WAIT, else 0: refuse at once)."""
    path = lock_path(cache).resolve()
    key = str(path)
    with _guard:  # one thread acquires; the others of this process then re-enter
        if key in _held:
            _held[key].depth += 1
        elif _inherited(key):
            key = None
        else:
            handle = _acquire(path, command or _command_line(), wait_seconds() if wait is None else wait)
            _held[key] = _Hold(handle, os.environ.get(HOLDER_ENV))
            os.environ[HOLDER_ENV] = f"{os.getpid()}:{key}"
    try:
        yield path
    finally:
        if key is not None:
            _release(key)


def _acquire(path: Path, command: str, wait: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # not truncated: the holder's record stays readable
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise WorkspaceBusy(_busy_message(path, wait)) from None
            time.sleep(_POLL_SECONDS)
    record = {
        "pid": os.getpid(),
        "command": " ".join(command.split()),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    return handle


def _release(key: str) -> None:
    with _guard:
        hold = _held[key]
        hold.depth -= 1
        if hold.depth > 0:
            return
        del _held[key]
        if hold.previous_env is None:
            os.environ.pop(HOLDER_ENV, None)
        else:
            os.environ[HOLDER_ENV] = hold.previous_env
        hold.handle.seek(0)
        hold.handle.truncate()  # before unlocking: the next holder's record is never erased by us
        hold.handle.flush()
        fcntl.flock(hold.handle.fileno(), fcntl.LOCK_UN)
        hold.handle.close()


def _inherited(key: str) -> bool:
    """True when an ancestor that holds this lock spawned us (it set HOLDER_ENV): the lock file still
    names that pid and the pid is alive. A stale variable (holder gone) is ignored."""
    value = os.environ.get(HOLDER_ENV, "")
    pid_text, _, held_path = value.partition(":")
    if held_path != key or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    pid = int(pid_text)
    record = _read_holder(Path(key)) or {}
    return record.get("pid") == pid and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _busy_message(path: Path, wait: float) -> str:
    record = _read_holder(path) or {}
    who = (
        f"pid {record.get('pid')} (`{record.get('command')}`, since {record.get('since')})"
        if record
        else "another process"
    )
    waited = f" after waiting {wait:g} s" if wait else ""
    return (
        f"the workspace is busy{waited}: {who} holds {path}; one run at a time per workspace: wait "
        f"for it to finish (or set {WAIT_ENV}=SECONDS to wait for it)"
    )


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else sys.executable, *sys.argv[1:]])
