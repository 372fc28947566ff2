"""`python -m tasks.<stage> [--params PATH]`: the same entry for a shell, DVC and CI. Params are
validated first (nothing runs on a bad file); then the stage runs holding the workspace lock
(tasks.common.workspace_lock): one run at a time per workspace."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, ParamsError, load_stage
from tasks.common.workspace_lock import workspace_lock

SUMMARY_NUMBERS = 6  # counts shown in the one-line summary at most


def summary_line(summary: Any, seconds: float) -> str:
    """The one line a finished stage logs, from `python -m tasks.<stage>` and from the flow alike:
    `finished in 3.51 s: images=42 kept=42 decoded=42` (the first top-level numbers of its summary)."""
    numbers = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in (summary.items() if isinstance(summary, dict) else ())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seconds"
    ]
    counts = " ".join(numbers[:SUMMARY_NUMBERS])
    return f"finished in {seconds:.2f} s" + (f": {counts}" if counts else "")


def stage_main(stage: str, run: Callable[[Any, Any], Any], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    try:
        params, paths = load_stage(stage, args.params)
        with workspace_lock(paths.cache, command=f"python -m tasks.{stage} --params {args.params}"):
            started = time.perf_counter()
            result = run(params, paths)
        summary = result.summary() if hasattr(result, "summary") else result
        logging.getLogger(stage).info(summary_line(summary, time.perf_counter() - started))
    except (ParamsError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0
