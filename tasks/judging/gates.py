"""Promotion gates, pure: metrics from predictions on one test set, and the checks a candidate must
pass against the floor and against the champion scored on the same images.

The paired gate tells an improvement from noise: both models answer the same test images, so only the
images exactly one of them gets right carry evidence (b: candidate right, champion wrong; c: the other
way round). Under "equally good" each such image is a fair coin, so the exact McNemar test is a
binomial test of b against b + c at 1/2; the gate passes when b > c and the two-sided p-value is below
promote.max_paired_p. One image better out of 167 (b = 1, c = 0) has p = 1: not evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binom
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
    # per test image, in test-image order: was the prediction right (the paired gate's input)
    correct: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Rules:
    metric: str
    floor: float
    min_improvement: float
    max_class_recall_drop: float
    max_ece: float | None = None
    max_latency_ms: float | None = None
    paired_gate: bool = False  # enforce the paired (McNemar) gate; off, it is still computed and reported
    max_paired_p: float = 0.05


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
    return Scores(
        metrics, {c: float(r) for c, r in zip(classes, recalls)}, latency_ms, correct=tuple(bool(x) for x in correct)
    )


def mcnemar_exact(candidate_correct, champion_correct) -> tuple[int, int, float]:
    """(b, c, p): b images only the candidate gets right, c only the champion, and the exact two-sided
    McNemar p-value, min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); p = 1 when b + c = 0."""
    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    if cand.shape != champ.shape:
        raise ValueError(f"correctness vectors differ in length: {cand.shape} vs {champ.shape}")
    b, c = int((cand & ~champ).sum()), int((~cand & champ).sum())
    p = 1.0 if b + c == 0 else float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))
    return b, c, p


def check_gates(candidate: Scores, champion: Scores | None, rules: Rules) -> list[Gate]:
    """Every gate, passed or not, so a decision can always be explained. With no champion only the
    absolute gates (floor, ECE, latency) can fail."""
    value = candidate.metrics[rules.metric]
    gates = [Gate("floor", value, rules.floor, value >= rules.floor, f"{rules.metric} >= floor")]
    if champion is None:
        gates.append(Gate("improvement", None, rules.min_improvement, True, "no champion to beat"))
        gates.append(Gate("class_recall_drop", None, rules.max_class_recall_drop, True, "no champion to compare"))
        gates.append(
            Gate("paired", None, rules.max_paired_p if rules.paired_gate else None, True, "no champion to compare")
        )
    else:
        delta = value - champion.metrics[rules.metric]
        gates.append(
            Gate(
                "improvement",
                delta,
                rules.min_improvement,
                delta >= rules.min_improvement - _TOLERANCE,
                f"{rules.metric} {value:.4f} vs champion {champion.metrics[rules.metric]:.4f}",
            )
        )
        gates.append(_class_recall_gate(candidate, champion, rules.max_class_recall_drop))
        gates.append(_paired_gate(candidate, champion, rules))
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
    drops = {
        c: champion.per_class_recall[c] - candidate.per_class_recall.get(c, 0.0) for c in champion.per_class_recall
    }
    worst = max(drops, key=drops.get) if drops else None
    drop = drops[worst] if worst is not None else 0.0
    detail = (
        f"largest drop: class {worst!r} {champion.per_class_recall[worst]:.3f} -> "
        f"{candidate.per_class_recall.get(worst, 0.0):.3f}"
        if worst is not None
        else "no classes"
    )
    return Gate("class_recall_drop", drop, max_drop, drop <= max_drop + _TOLERANCE, detail)


def _paired_gate(candidate: Scores, champion: Scores, rules: Rules) -> Gate:
    """Exact McNemar on the two models' per-image correctness (module docstring). Off
    (paired_gate: false) it still reports p and the discordant counts, and passes."""
    threshold = rules.max_paired_p if rules.paired_gate else None
    off = "" if rules.paired_gate else " (not enforced: promote.paired_gate: false)"
    if candidate.correct is None or champion.correct is None or len(candidate.correct) != len(champion.correct):
        # asked for but not measurable: fail rather than pass silently (as the latency bound does)
        return Gate(
            "paired",
            None,
            threshold,
            not rules.paired_gate,
            f"per-image correctness of both models on the same test images is not available{off}",
        )
    b, c, p = mcnemar_exact(candidate.correct, champion.correct)
    significant = b > c and p < rules.max_paired_p
    if significant:
        verdict = f"significant improvement (p < {rules.max_paired_p:g})"
    elif b > c:
        verdict = f"better on {b - c} more images, not significant (p >= {rules.max_paired_p:g})"
    else:
        verdict = "not better than the champion"
    detail = (
        f"exact McNemar on {len(candidate.correct)} test images: b={b} only the candidate right, "
        f"c={c} only the champion right, two-sided p={p:.4g}: {verdict}{off}"
    )
    return Gate("paired", p, threshold, significant or not rules.paired_gate, detail)


def failed(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if not g.passed]
