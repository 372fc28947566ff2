"""`python -m tasks.<stage> [--params PATH]`: the same entry for a shell, DVC and CI."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable

from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, ParamsError, load_stage


def stage_main(stage: str, run: Callable[[Any, Any], Any], argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{stage}] %(message)s")
    try:
        params, paths = load_stage(stage, args.params)
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
