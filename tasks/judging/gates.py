"""Promotion gates, pure: metrics from predictions on one test set, and the checks a candidate must
pass against the floor and against the champion scored on the same images."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import f1_score, recall_score

from tasks.judging.metrics import calibration_error

# Metrics a promotion can be decided on (higher is better). ECE and latency are bounds, not scores.
PROMOTION_METRICS = ("test/macro_f1", "test/acc")
ECE_BINS = 15
# differences of rates from the same counts (1.0 - 0.95) must not fail a threshold on float noise
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Scores:
    """One model's results on the current test set."""

    metrics: dict[str, float]
    per_class_recall: dict[str, float]
    latency_ms: float | None = None  # p50 single-image latency, measured only when a bound asks for it
    classes: tuple[str, ...] | None = None  # the label set the model predicts, when the model declares it


@dataclass(frozen=True)
class Rules:
    metric: str
    floor: float
    min_improvement: float
    max_class_recall_drop: float
    max_ece: float | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class Gate:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = field(default="")

    def as_dict(self) -> dict:
        return asdict(self)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins (metrics' one binning)."""
    return calibration_error(confidence, correct, bins)


def score_predictions(actual, predicted, confidence, latency_ms: float | None = None) -> Scores:
    """Metrics over the classes present in the test set, so two models scored on the same images are
    compared on exactly the same classes whatever extra labels either of them can predict."""
    actual = np.asarray(actual, dtype=str)
    predicted = np.asarray(predicted, dtype=str)
    classes = sorted(set(actual.tolist()))
    recalls = recall_score(actual, predicted, labels=classes, average=None, zero_division=0)
    correct = actual == predicted
    metrics = {
        "test/acc": float(correct.mean()),
        "test/macro_f1": float(f1_score(actual, predicted, labels=classes, average="macro", zero_division=0)),
        "test/ece": expected_calibration_error(confidence, correct),
    }
    if latency_ms is not None:
        metrics["test/latency_p50_ms"] = float(latency_ms)
    return Scores(metrics, {c: float(r) for c, r in zip(classes, recalls)}, latency_ms)


def check_gates(candidate: Scores, champion: Scores | None, rules: Rules) -> list[Gate]:
    """Every gate, passed or not, so a decision can always be explained. With no champion only the
    absolute gates (floor, ECE, latency) can fail."""
    value = candidate.metrics[rules.metric]
    gates = [Gate("floor", value, rules.floor, value >= rules.floor, f"{rules.metric} >= floor")]
    if champion is None:
        gates.append(Gate("improvement", None, rules.min_improvement, True, "no champion to beat"))
        gates.append(Gate("class_recall_drop", None, rules.max_class_recall_drop, True, "no champion to compare"))
    else:
        delta = value - champion.metrics[rules.metric]
        gates.append(Gate(
            "improvement", delta, rules.min_improvement, delta >= rules.min_improvement - _TOLERANCE,
            f"{rules.metric} {value:.4f} vs champion {champion.metrics[rules.metric]:.4f}",
        ))
        gates.append(_class_recall_gate(candidate, champion, rules.max_class_recall_drop))
    ece = candidate.metrics["test/ece"]
    if rules.max_ece is None:
        gates.append(Gate("ece", ece, None, True, "no bound (max_ece: null)"))
    else:
        gates.append(Gate("ece", ece, rules.max_ece, ece <= rules.max_ece, "test/ece <= max_ece"))
    if rules.max_latency_ms is None:
        gates.append(Gate("latency", candidate.latency_ms, None, True, "no bound (max_latency_ms: null)"))
    else:
        latency = candidate.latency_ms
        passed = latency is not None and latency <= rules.max_latency_ms
        gates.append(Gate("latency", latency, rules.max_latency_ms, passed, "p50 single-image ms <= max_latency_ms"))
    return gates


def _class_recall_gate(candidate: Scores, champion: Scores, max_drop: float) -> Gate:
    drops = {c: champion.per_class_recall[c] - candidate.per_class_recall.get(c, 0.0) for c in champion.per_class_recall}
    worst = max(drops, key=drops.get) if drops else None
    drop = drops[worst] if worst is not None else 0.0
    detail = f"largest drop: class {worst!r} {champion.per_class_recall[worst]:.3f} -> " \
             f"{candidate.per_class_recall.get(worst, 0.0):.3f}" if worst is not None else "no classes"
    return Gate("class_recall_drop", drop, max_drop, drop <= max_drop + _TOLERANCE, detail)


def failed(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if not g.passed]
