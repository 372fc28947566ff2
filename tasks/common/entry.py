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
        logging.getLogger(stage).info("finished in %.2f s", time.perf_counter() - started)
    except (ParamsError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary() if hasattr(result, "summary") else result
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0
