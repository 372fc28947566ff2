"""`imgcls ensemble --seeds N | --runs RUN_ID ... [--baseline]`: make an ensemble of CNNs (and, with
--baseline, evaluate's HOG baseline as one more member) the candidate model
(tasks/judging/ensemble.py does the work; docs/ensembles.md). Afterwards `imgcls stage evaluate` and
`imgcls stage promote` judge and register it like any trained model."""

from __future__ import annotations

from pathlib import Path

from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, Paths, parse_section, validate_file
from tasks.common.workspace_lock import workspace_lock


def make(
    params_path: str | Path = DEFAULT_PARAMS,
    *,
    seeds: int | None = None,
    runs: list[str] | None = None,
    weighting: str = "auto",
    baseline: bool = False,
) -> dict:
    from tasks.evaluate import Params as EvaluateParams
    from tasks.judging.ensemble import build
    from tasks.train import Params as TrainParams

    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    data = validate_file(params_path)
    train = parse_section(data, "train", TrainParams, params_path)
    paths = parse_section(data, "paths", Paths, params_path)
    hog = parse_section(data, "evaluate", EvaluateParams, params_path).baseline if baseline else None
    with workspace_lock(paths.cache):
        return build(train, paths, seeds=seeds, runs=runs, weighting=weighting, baseline=hog)


def summary_lines(result: dict) -> list[str]:
    if not result:
        return ["no ensemble made here (not the rank-zero process)"]
    m = result["metrics"]
    members = ", ".join(
        f"{run_id} (weight {w:.3f}, val acc {m[f'val/m{i}/acc']:.4f})"
        for i, (run_id, w) in enumerate(zip(result["members"], result["weights"]))
    )
    return [
        f"ensemble run {result['run_id']}: val acc {m['val/ensemble/acc']:.4f}, "
        f"val log loss {m['val/ensemble/log_loss']:.4f}, "
        f"weights {'fitted on val' if m['ensemble/weights_fitted'] else 'equal (val does not tell the members apart)'}",
        f"members: {members}",
        f"p50 single-image predict: {m['ensemble/latency_p50_ms']:.1f} ms (one member "
        f"{m['ensemble/member_latency_p50_ms']:.1f} ms)",
        "next: imgcls stage evaluate && imgcls stage promote",
    ]
