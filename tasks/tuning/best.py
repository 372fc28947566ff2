"""The study's result as something to run: a params file holding only a `train:` section with the best
trial's values (merged over params.yaml by `imgcls run --params-override`, never written into it) and the
equivalent `dvc exp run -S ...` command. Both are written atomically to reports/tune/."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from tasks.common.atomic import write_text

BEST_PARAMS = "best_params.yaml"
DVC_COMMAND = "dvc_exp_command.txt"
TRIALS = "trials.csv"
SUMMARY = "summary.json"


def best_trial(study):
    """The best completed trial, or None when no trial has completed (all pruned or failed so far)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    done = [t for t in done if t.value is not None and math.isfinite(t.value)]
    return max(done, key=lambda t: t.value) if done else None


def plain(value: Any) -> Any:
    """numpy scalars and the like as the YAML/JSON scalars they stand for."""
    return value.item() if hasattr(value, "item") else value


def best_params_yaml(values: dict[str, Any], header: str) -> str:
    body = yaml.safe_dump({"train": {k: plain(v) for k, v in values.items()}}, sort_keys=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def dvc_set_value(value: Any) -> str:
    """A value as `dvc exp run -S key=value` reads it (YAML): numbers in full precision, strings bare."""
    value = plain(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)) or value is None or isinstance(value, bool):
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return str(value)


def dvc_command(values: dict[str, Any]) -> str:
    sets = " ".join(f"-S {shlex.quote(f'train.{k}={dvc_set_value(v)}')}" for k, v in values.items())
    return f"dvc exp run {sets}"


def run_command(params_file: str | Path) -> str:
    return f"imgcls run --params-override {shlex.quote(str(params_file))}"


def write_best(values: dict[str, Any], folder: str | Path, header: str) -> dict[str, str]:
    """best_params.yaml and dvc_exp_command.txt in `folder`; returns the files and both commands."""
    folder = Path(folder)
    params_file = write_text(best_params_yaml(values, header), folder / BEST_PARAMS)
    dvc = dvc_command(values)
    write_text(dvc + "\n", folder / DVC_COMMAND)
    return {
        "best_params_file": str(params_file),
        "dvc_command_file": str(folder / DVC_COMMAND),
        "run_command": run_command(params_file),
        "dvc_command": dvc,
    }
