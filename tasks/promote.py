"""promote: register the trained model, score it and the current champion on the current test split,
and move the `champion` alias only when every gate passes. Also the manual `promote_version` and
`rollback` behind `imgcls promote` / `imgcls rollback`."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from tasks.judging import registry
from tasks.common.atomic import write_json
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.judging.gates import PROMOTION_METRICS, Gate, Rules, Scores, check_gates, failed
from tasks.common.params import Paths, Strict
from tasks.judging.registry import CHALLENGER, CHAMPION, PREVIOUS
from tasks.judging.scoring import HeldOut, load_test_set, score_model

log = logging.getLogger(__name__)


class Params(Strict):
    model_name: str = Field("imgcls", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    metric: Literal[PROMOTION_METRICS] = "test/macro_f1"  # scored on the current test split
    min_improvement: float = Field(0.002, ge=0)   # over the champion re-scored on the same images
    floor: float = Field(0.9, ge=0, le=1)         # absolute minimum of `metric`, first model included
    max_class_recall_drop: float = Field(0.05, ge=0, le=1)
    max_ece: float | None = Field(None, ge=0, le=1)
    max_latency_ms: float | None = Field(None, gt=0)  # p50 single-image predict through the pyfunc
    score_batch_size: int = Field(64, ge=1)

    def rules(self) -> Rules:
        return Rules(self.metric, self.floor, self.min_improvement, self.max_class_recall_drop,
                     self.max_ece, self.max_latency_ms)


def read_run_info(train_dir: str | Path) -> dict:
    path = Path(train_dir) / "run.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run the `train` stage first")
    info = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("run_id", "model_uri") if not info.get(k)]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}: run the `train` stage again")
    return info


def register_candidate(client, name: str, info: dict):
    """Register the trained model once; promoting the same training run again re-judges that version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = info["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id} not found in {registry.tracking_uri()} (run.json says "
                        f"{info.get('tracking_uri')}): set MLFLOW_TRACKING_URI to the store train used") from None
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version))
    tags = {"run_id": run_id, "dataset_version": info.get("dataset_version") or "",
            "git_commit": run.data.tags.get("git_commit", "")}
    tags.update({f"metric.{k}": v for k, v in sorted(run.data.metrics.items()) if k.startswith(("test/", "val/"))})
    return mlflow.register_model(info["model_uri"], name, tags={k: str(v) for k, v in tags.items() if v != ""})


def run(params: Params, paths: Paths) -> dict:
    info = read_run_info(paths.train_dir)
    test = load_test_set(paths.split, paths.store)
    client = registry.connect()
    name = params.model_name
    candidate = str(register_candidate(client, name, info).version)
    scores_of = _scorer(name, candidate, test, params)
    scores_of(candidate)
    # Score the champion before taking the lock: it is the slow part. Under the lock the alias is read
    # again and a champion that changed meanwhile is scored too, so the compare-and-set is exact.
    early_champion = registry.aliases(client, name).get(CHAMPION)
    if early_champion and early_champion != candidate:
        scores_of(early_champion)
    with registry.registry_lock(registry.lock_path(paths.cache)):
        champion = registry.aliases(client, name).get(CHAMPION)
        decision = _decide(name, candidate, champion, scores_of, params.rules())
        decision["test_images"] = len(test.image_paths)
        _apply(client, decision)
        decision["aliases"] = registry.aliases(client, name)
    write_json(decision, paths.report_dir("promote") / "decision.json")
    log.info("version %s: %s (%s)", candidate, decision["decision"], decision["reason"])
    return {k: decision[k] for k in ("model_name", "decision", "reason", "aliases")} | {
        "candidate_version": candidate, "compared_to": champion,
    }


def _scorer(name: str, candidate: str, test: HeldOut, params: Params) -> Callable[[str], Scores]:
    cache: dict[str, Scores] = {}

    def scores_of(version: str) -> Scores:
        if version not in cache:
            # latency only bounds the candidate; measuring the champion would only cost time
            measure = version == candidate and params.max_latency_ms is not None
            cache[version] = score_model(f"models:/{name}/{version}", test, params.score_batch_size, measure)
        return cache[version]

    return scores_of


def _decide(name: str, candidate: str, champion: str | None, scores_of, rules: Rules) -> dict:
    cand = scores_of(candidate)
    champ = scores_of(champion) if champion and champion != candidate else None
    gates = check_gates(cand, champ, rules)
    bad = failed(gates)
    value = cand.metrics[rules.metric]
    if champion == candidate:
        outcome, reason = "kept", f"version {candidate} is already the champion"
    elif bad:
        outcome, reason = "rejected", "failed " + "; ".join(_explain(g) for g in bad)
    elif champ is None:
        outcome, reason = "promoted", f"first champion: {rules.metric} {value:.4f} >= floor {rules.floor}"
    else:
        outcome, reason = "promoted", (f"{rules.metric} {value:.4f} beats champion v{champion} "
                                       f"{champ.metrics[rules.metric]:.4f} re-scored on the same test images")
    return {
        "model_name": name, "metric": rules.metric, "decision": outcome, "reason": reason,
        "decided_at": registry.now(),
        "candidate": {"version": candidate, **_scores_dict(cand)},
        "champion": None if champ is None else {"version": champion, **_scores_dict(champ)},
        "gates": [g.as_dict() for g in gates],
    }


def _explain(gate: Gate) -> str:
    value = "not measured" if gate.value is None else f"{gate.value:.4f}"
    return f"{gate.name}: {value} vs threshold {gate.threshold}"


def _scores_dict(scores: Scores) -> dict:
    return {"metrics": scores.metrics, "per_class_recall": scores.per_class_recall}


def _apply(client, decision: dict) -> None:
    """Move aliases for the decision and record it on the candidate version. Caller holds the lock."""
    name, candidate = decision["model_name"], decision["candidate"]["version"]
    champion = decision["champion"]["version"] if decision["champion"] else None
    if decision["decision"] == "promoted":
        registry.move_alias(client, name, CHAMPION, candidate)
        if champion:
            registry.move_alias(client, name, PREVIOUS, champion)
            registry.set_tags(client, name, champion, {"replaced_by": candidate, "demoted_at": decision["decided_at"]})
        if registry.aliases(client, name).get(CHALLENGER) == candidate:
            registry.move_alias(client, name, CHALLENGER, None)
    elif decision["decision"] == "rejected":
        registry.move_alias(client, name, CHALLENGER, candidate)
    else:  # kept: the champion's record of how it got there stays as it was
        return
    metric = decision["metric"]
    registry.set_tags(client, name, candidate, {
        "promotion_decision": decision["decision"],
        "promotion_reason": decision["reason"],
        "promotion_decided_at": decision["decided_at"],
        "promotion_metric": metric,
        "promotion_metric_value": decision["candidate"]["metrics"][metric],
        "promotion_compared_to": champion or "none",
        "promotion_gates": json.dumps({g["name"]: g["passed"] for g in decision["gates"]}),
        "manual": "false",
    })


def promote_version(model_name: str, version: str | int, reason: str, *, cache: str | Path = Paths().cache) -> dict:
    """Make `version` the champion by hand, no gates; the old champion becomes `previous`."""
    if not reason or not reason.strip():
        raise UserError("a manual promotion needs a reason (--reason ...)")
    client = registry.connect()
    version = str(registry.model_version(client, model_name, version).version)
    with registry.registry_lock(registry.lock_path(cache)):
        current = registry.aliases(client, model_name)
        old = current.get(CHAMPION)
        if old == version:
            raise UserError(f"version {version} of {model_name!r} is already the champion")
        when, who = registry.now(), registry.actor()
        registry.move_alias(client, model_name, CHAMPION, version)
        if old:
            registry.move_alias(client, model_name, PREVIOUS, old)
            registry.set_tags(client, model_name, old, {"replaced_by": version, "demoted_at": when})
        if current.get(CHALLENGER) == version:
            registry.move_alias(client, model_name, CHALLENGER, None)
        registry.set_tags(client, model_name, version, {
            "manual": "true", "promotion_decision": "manual_promote", "promotion_reason": reason.strip(),
            "promoted_by": who, "promotion_decided_at": when, "promotion_compared_to": old or "none",
        })
        after = registry.aliases(client, model_name)
    log.info("version %s is now the champion of %s (was %s)", version, model_name, old)
    return {"model_name": model_name, "champion": version, "previous": old, "aliases": after}


def rollback(model_name: str, reason: str = "", *, cache: str | Path = Paths().cache) -> dict:
    """champion <- previous. The demoted version is tagged rolled_back (not made a challenger: it was
    taken out of service, not waiting for one)."""
    client = registry.connect()
    with registry.registry_lock(registry.lock_path(cache)):
        current = registry.aliases(client, model_name)
        demoted, restored = current.get(CHAMPION), current.get(PREVIOUS)
        if demoted is None:
            raise UserError(f"{model_name!r} has no champion to roll back")
        if restored is None:
            raise UserError(f"{model_name!r} has no previous champion to roll back to")
        when, who = registry.now(), registry.actor()
        registry.move_alias(client, model_name, CHAMPION, restored)
        registry.move_alias(client, model_name, PREVIOUS, None)
        registry.set_tags(client, model_name, demoted, {
            "rolled_back": "true", "rolled_back_at": when, "rolled_back_by": who,
            "rolled_back_to": restored, "rollback_reason": reason,
        })
        registry.set_tags(client, model_name, restored, {
            "manual": "true", "promotion_decision": "rollback", "promotion_reason": reason or f"rollback from v{demoted}",
            "promoted_by": who, "promotion_decided_at": when, "promotion_compared_to": demoted,
        })
        after = registry.aliases(client, model_name)
    log.info("rolled %s back: champion v%s -> v%s", model_name, demoted, restored)
    return {"model_name": model_name, "champion": restored, "rolled_back": demoted, "aliases": after}


def main(argv: list[str] | None = None) -> int:
    return stage_main("promote", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
