"""promote: register the trained model, score it and the current champion on the current test split,
and move the `champion` alias only when every gate passes. Also the manual `promote_version` and
`rollback` behind `imgcls promote` / `imgcls rollback`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.common import run_records
from tasks.common.atomic import write_json
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.params import Paths, Strict
from tasks.judging import registry
from tasks.judging.gates import PROMOTION_METRICS, Gate, Rules, Scores, check_gates, failed
from tasks.judging.model_card import attach_model_card, model_card
from tasks.judging.registry import CHALLENGER, CHAMPION, PREVIOUS
from tasks.judging.scoring import HeldOut, class_names, load_test_set, score_model

log = logging.getLogger(__name__)


class Params(Strict):
    model_name: str = Field("imgcls", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    metric: Literal[PROMOTION_METRICS] = "test/macro_f1"  # scored on the current test split
    min_improvement: float = Field(0.002, ge=0)  # over the champion re-scored on the same images
    floor: float = Field(0.9, ge=0, le=1)  # absolute minimum of `metric`, first model included
    max_class_recall_drop: float = Field(0.05, ge=0, le=1)
    max_ece: float | None = Field(None, ge=0, le=1)
    max_latency_ms: float | None = Field(None, gt=0)  # p50 single-image predict through the pyfunc
    # paired gate: exact McNemar on per-image correctness vs the champion (tasks/judging/gates.py); off,
    # its p-value and discordant counts are still written to decision.json
    paired_gate: bool = False
    max_paired_p: float = Field(0.05, gt=0, le=1)  # pass only when better (b > c) with p below this
    score_batch_size: int = Field(64, ge=1)
    # auto: register and move aliases, except under `dvc exp run` (an experiment writes its decision and
    # leaves the production registry alone); always / never force either way
    registry_writes: Literal["auto", "always", "never"] = "auto"

    def rules(self) -> Rules:
        return Rules(
            self.metric,
            self.floor,
            self.min_improvement,
            self.max_class_recall_drop,
            self.max_ece,
            self.max_latency_ms,
            paired_gate=self.paired_gate,
            max_paired_p=self.max_paired_p,
        )


def register_candidate(client, name: str, info: dict):
    """Register the trained model once; promoting the same training run again re-judges that version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = info["run_id"]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"run {run_id} not found in {registry.tracking_uri()} (run.json says "
            f"{info.get('tracking_uri')}): set MLFLOW_TRACKING_URI to the store train used"
        ) from None
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version))
    tags = {
        "run_id": run_id,
        "dataset_version": info.get("dataset_version") or "",
        "git_commit": run.data.tags.get("git_commit", ""),
    }
    tags.update({f"metric.{k}": v for k, v in sorted(run.data.metrics.items()) if k.startswith(("test/", "val/"))})
    return mlflow.register_model(info["model_uri"], name, tags={k: str(v) for k, v in tags.items() if v != ""})


def register_or_mark(client, name: str, info: dict, paths: Paths):
    """(the held-out test set, the candidate's version). Every trained model is either registered or
    its training run is tagged why not: any error before the version exists is recorded on the run
    (imgcls.registered=false, imgcls.not_registered_reason) and raised again."""
    run_id = info["run_id"]
    try:
        test = load_test_set(paths.split, paths.store)
        version = str(register_candidate(client, name, info).version)
    except Exception as exc:
        _tag_run(run_records.mark_not_registered, client, run_id, f"promote failed: {exc}")
        raise
    _tag_run(run_records.mark_registered, client, run_id, name, version)
    return test, version


def _tag_run(mark: Callable, client, run_id: str, *args) -> None:
    """Best effort: a run that cannot be tagged (not in this store, store down) must not hide the
    error that is being reported, nor fail a registration that worked."""
    from mlflow.exceptions import MlflowException

    try:
        mark(client, run_id, *args)
    except MlflowException as exc:
        log.warning("could not tag training run %s with its registration state: %s", run_id, exc)


def experiment_name() -> str | None:
    """The DVC experiment this process runs in (`dvc exp run` sets these), else None."""
    return os.environ.get("DVC_EXP_NAME") or (os.environ.get("DVC_EXP_BASELINE_REV") and "unnamed")


def run(params: Params, paths: Paths) -> dict:
    info = run_records.read_run(paths.train_dir)
    client = registry.connect()
    name = params.model_name
    experiment = experiment_name()
    if params.registry_writes == "never" or (params.registry_writes == "auto" and experiment):
        return judge_without_registering(client, name, info, paths, params, experiment)
    test, candidate = register_or_mark(client, name, info, paths)
    scores_of = _scorer(name, candidate, info["model_uri"], test, params)
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
    card = model_card(
        paths,
        model_name=name,
        version=candidate,
        decision=decision,
        dataset_version=info.get("dataset_version"),
        run_id=info["run_id"],
    )
    attach_model_card(client, name, candidate, card)
    return {k: decision[k] for k in ("model_name", "decision", "reason", "aliases")} | {
        "candidate_version": candidate,
        "compared_to": champion,
    }


def judge_without_registering(
    client, name: str, info: dict, paths: Paths, params: Params, experiment: str | None
) -> dict:
    """The same judgement against the current champion, written to decision.json, with nothing
    registered and no alias moved: what an experiment needs to compare, and no more."""
    test = load_test_set(paths.split, paths.store)
    candidate = f"run:{info['run_id']}"
    scores_of = _scorer(name, candidate, info["model_uri"], test, params)
    champion = registry.aliases(client, name).get(CHAMPION) if registry.model_exists(client, name) else None
    decision = _decide(name, candidate, champion, scores_of, params.rules())
    why = f"dvc experiment {experiment}" if experiment else "promote.registry_writes: never"
    decision.update(
        test_images=len(test.image_paths),
        registered=False,
        would_be=decision["decision"],
        decision="not_registered",
        reason=f"{why}: registry untouched; would be {decision['decision']}: {decision['reason']}",
    )
    decision["aliases"] = registry.aliases(client, name) if champion else {}
    write_json(decision, paths.report_dir("promote") / "decision.json")
    _tag_run(run_records.mark_not_registered, client, info["run_id"], why)
    log.info("%s", decision["reason"])
    return {k: decision[k] for k in ("model_name", "decision", "reason", "aliases")} | {
        "candidate_version": None,
        "compared_to": champion,
    }


def _scorer(name: str, candidate: str, candidate_uri: str, test: HeldOut, params: Params) -> Callable[[str], Scores]:
    """version -> its scores on `test`, each model scored once; `candidate` is scored from candidate_uri."""
    cache: dict[str, Scores] = {}

    def scores_of(version: str) -> Scores:
        if version not in cache:
            # latency only bounds the candidate; measuring the champion would only cost time
            measure = version == candidate and params.max_latency_ms is not None
            uri = candidate_uri if version == candidate else f"models:/{name}/{version}"
            cache[version] = score_model(uri, test, params.score_batch_size, measure)
        return cache[version]

    return scores_of


def label_set_change(candidate: tuple[str, ...] | None, champion: tuple[str, ...] | None) -> str | None:
    """A one-line description of how two declared label sets differ; None when they agree or either is unknown."""
    if not candidate or not champion or set(candidate) == set(champion):
        return None
    added, removed = sorted(set(candidate) - set(champion)), sorted(set(champion) - set(candidate))
    return (
        f"label set differs from the champion's (added {added or 'none'}, removed {removed or 'none'}): "
        f"a new task is not an improvement; confirm with `imgcls promote --new-task --version N --reason ...` "
        f"or give promote.model_name a new name"
    )


def _decide(name: str, candidate: str, champion: str | None, scores_of, rules: Rules) -> dict:
    cand = scores_of(candidate)
    champ = scores_of(champion) if champion and champion != candidate else None
    gates = check_gates(cand, champ, rules)
    bad = failed(gates)
    value = cand.metrics[rules.metric]
    new_task = label_set_change(cand.classes, champ.classes) if champ else None
    if champion == candidate:
        outcome, reason = "kept", f"version {candidate} is already the champion"
    elif new_task:
        outcome, reason = "refused", new_task
    elif bad:
        outcome, reason = "rejected", "failed " + "; ".join(_explain(g) for g in bad)
    elif champ is None:
        outcome, reason = "promoted", f"first champion: {rules.metric} {value:.4f} >= floor {rules.floor}"
    else:
        outcome, reason = (
            "promoted",
            (
                f"{rules.metric} {value:.4f} beats champion v{champion} "
                f"{champ.metrics[rules.metric]:.4f} re-scored on the same test images"
            ),
        )
    return {
        "model_name": name,
        "metric": rules.metric,
        "decision": outcome,
        "reason": reason,
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
    elif decision["decision"] == "refused":
        pass  # another label set: no alias moves until someone confirms the new task
    else:  # kept: the champion's record of how it got there stays as it was
        return
    metric = decision["metric"]
    registry.set_tags(
        client,
        name,
        candidate,
        {
            "promotion_decision": decision["decision"],
            "promotion_reason": decision["reason"],
            "promotion_decided_at": decision["decided_at"],
            "promotion_metric": metric,
            "promotion_metric_value": decision["candidate"]["metrics"][metric],
            "promotion_compared_to": champion or "none",
            "promotion_gates": json.dumps({g["name"]: g["passed"] for g in decision["gates"]}),
            "manual": "false",
        },
    )


def promote_version(
    model_name: str, version: str | int, reason: str, *, cache: str | Path = Paths().cache, new_task: bool = False
) -> dict:
    """Make `version` the champion by hand, no gates; the old champion becomes `previous`. A version
    whose label set differs from the champion's needs new_task=True (`--new-task`)."""
    if not reason or not reason.strip():
        raise UserError("a manual promotion needs a reason (--reason ...)")
    client = registry.connect()
    version = str(registry.model_version(client, model_name, version).version)
    champion = registry.aliases(client, model_name).get(CHAMPION)
    if champion and champion != version and not new_task:
        change = label_set_change(_declared_classes(model_name, version), _declared_classes(model_name, champion))
        if change:
            raise UserError(f"version {version}: {change}")
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
        registry.set_tags(
            client,
            model_name,
            version,
            {
                "manual": "true",
                "promotion_decision": "manual_promote",
                "promotion_reason": reason.strip(),
                "promoted_by": who,
                "promotion_decided_at": when,
                "promotion_compared_to": old or "none",
            },
        )
        after = registry.aliases(client, model_name)
    log.info("version %s is now the champion of %s (was %s)", version, model_name, old)
    return {"model_name": model_name, "champion": version, "previous": old, "aliases": after}


def _declared_classes(model_name: str, version: str) -> tuple[str, ...] | None:
    import mlflow.pyfunc

    return class_names(mlflow.pyfunc.load_model(f"models:/{model_name}/{version}"))


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
        registry.set_tags(
            client,
            model_name,
            demoted,
            {
                "rolled_back": "true",
                "rolled_back_at": when,
                "rolled_back_by": who,
                "rolled_back_to": restored,
                "rollback_reason": reason,
            },
        )
        registry.set_tags(
            client,
            model_name,
            restored,
            {
                "manual": "true",
                "promotion_decision": "rollback",
                "promotion_reason": reason or f"rollback from v{demoted}",
                "promoted_by": who,
                "promotion_decided_at": when,
                "promotion_compared_to": demoted,
            },
        )
        after = registry.aliases(client, model_name)
    log.info("rolled %s back: champion v%s -> v%s", model_name, demoted, restored)
    return {"model_name": model_name, "champion": restored, "rolled_back": demoted, "aliases": after}


def main(argv: list[str] | None = None) -> int:
    return stage_main("promote", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
