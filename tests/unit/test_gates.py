import dataclasses

import numpy as np
import pytest

from tasks.judging.gates import (
    Rules,
    Scores,
    check_gates,
    expected_calibration_error,
    failed,
    mcnemar_exact,
    score_predictions,
)

RULES = Rules(metric="test/macro_f1", floor=0.8, min_improvement=0.02, max_class_recall_drop=0.05)


def scores(f1: float, recall: dict[str, float], ece: float = 0.05, latency: float | None = None) -> Scores:
    return Scores({"test/macro_f1": f1, "test/acc": f1, "test/ece": ece}, recall, latency)


def by_name(gates):
    return {g.name: g for g in gates}


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    # 10 predictions at 0.7 confidence, 7 right: perfectly calibrated
    assert expected_calibration_error(np.full(10, 0.7), np.array([1] * 7 + [0] * 3)) == pytest.approx(0.0)
    # always 0.99 sure, right half the time
    assert expected_calibration_error(np.full(10, 0.99), np.array([1, 0] * 5)) == pytest.approx(0.49)
    # two bins weighted by their size: |1-0.9|*0.5 + |0-0.3|*0.5
    assert expected_calibration_error(np.array([0.9, 0.9, 0.3, 0.3]), np.array([1, 1, 0, 0])) == pytest.approx(0.2)


def test_score_predictions_uses_the_test_set_classes():
    actual = ["a", "a", "b", "b"]
    predicted = ["a", "b", "b", "zzz"]  # "zzz": a label the test set does not have
    s = score_predictions(actual, predicted, [0.9, 0.6, 0.8, 0.5], latency_ms=3.0)
    assert s.per_class_recall == {"a": 0.5, "b": 0.5}
    assert s.metrics["test/acc"] == 0.5
    # f1(a) = 2*1*0.5/1.5, f1(b) = 2*0.5*0.5/1; "zzz" is not averaged in
    assert s.metrics["test/macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert s.metrics["test/latency_p50_ms"] == 3.0 and s.latency_ms == 3.0


def test_first_model_only_faces_the_absolute_gates():
    good = check_gates(scores(0.85, {"a": 0.85}), None, RULES)
    assert not failed(good)
    assert by_name(good)["improvement"].value is None
    bad = check_gates(scores(0.75, {"a": 0.75}), None, RULES)
    assert [g.name for g in failed(bad)] == ["floor"]


def test_improvement_must_reach_min_improvement_over_the_champion():
    champion = scores(0.90, {"a": 0.9, "b": 0.9})
    small = by_name(check_gates(scores(0.91, {"a": 0.91, "b": 0.91}), champion, RULES))["improvement"]
    assert not small.passed and small.value == pytest.approx(0.01)
    # exactly min_improvement passes, although 0.69 - 0.67 is 0.0199999999999999 in floating point
    low = scores(0.67, {"a": 0.67, "b": 0.67})
    assert by_name(check_gates(scores(0.69, {"a": 0.69, "b": 0.69}), low, RULES))["improvement"].passed


def test_class_recall_drop_blocks_a_better_average_that_sacrifices_one_class():
    champion = scores(0.85, {"a": 0.80, "b": 0.90})
    candidate = scores(0.95, {"a": 1.00, "b": 0.80})
    gate = by_name(check_gates(candidate, champion, RULES))["class_recall_drop"]
    assert not gate.passed and gate.value == pytest.approx(0.10) and "'b'" in gate.detail
    # a drop of exactly the allowed amount passes (0.95 - 0.90 is 0.0500000000000000444)
    ok = scores(0.95, {"a": 1.00, "b": 0.85})
    assert by_name(check_gates(ok, scores(0.85, {"a": 0.8, "b": 0.9}), RULES))["class_recall_drop"].passed


def test_optional_ece_and_latency_bounds():
    rules = Rules("test/macro_f1", 0.8, 0.02, 0.05, max_ece=0.1, max_latency_ms=50.0)
    gates = by_name(check_gates(scores(0.9, {"a": 0.9}, ece=0.2, latency=80.0), None, rules))
    assert not gates["ece"].passed and not gates["latency"].passed
    gates = by_name(check_gates(scores(0.9, {"a": 0.9}, ece=0.05, latency=10.0), None, rules))
    assert gates["ece"].passed and gates["latency"].passed
    # a bound that was asked for but could not be measured fails rather than passes silently
    assert not by_name(check_gates(scores(0.9, {"a": 0.9}), None, rules))["latency"].passed
    # without bounds both gates are reported, and pass
    unbounded = by_name(check_gates(scores(0.9, {"a": 0.9}, ece=0.9), None, RULES))
    assert unbounded["ece"].passed and unbounded["ece"].threshold is None


PAIRED = Rules(
    metric="test/acc", floor=0.5, min_improvement=0.0, max_class_recall_drop=1.0, paired_gate=True, max_paired_p=0.05
)


def paired_scores(correct: list[bool]) -> Scores:
    acc = float(np.mean(correct))
    return Scores({"test/macro_f1": acc, "test/acc": acc, "test/ece": 0.05}, {"a": acc}, correct=tuple(correct))


def pair(n: int, both_right: int, only_candidate: int, only_champion: int) -> tuple[Scores, Scores]:
    """Candidate and champion correctness on the same n images: the rest both get wrong."""
    rest = n - both_right - only_candidate - only_champion
    cand = [True] * both_right + [True] * only_candidate + [False] * only_champion + [False] * rest
    champ = [True] * both_right + [False] * only_candidate + [True] * only_champion + [False] * rest
    return paired_scores(cand), paired_scores(champ)


def test_score_predictions_keeps_per_image_correctness_in_test_image_order():
    s = score_predictions(["a", "b", "b", "a"], ["a", "a", "b", "b"], [0.9, 0.6, 0.8, 0.5])
    assert s.correct == (True, False, True, False)


def test_mcnemar_exact_counts_discordant_pairs_and_gives_the_binomial_p():
    b, c, p = mcnemar_exact([1, 1, 0, 1, 0], [1, 0, 1, 0, 0])
    assert (b, c) == (2, 1) and p == pytest.approx(1.0)  # 2 * P(X <= 1 | 3) = 2 * 4/8, capped at 1
    assert mcnemar_exact([1] * 10, [0] * 10) == (10, 0, pytest.approx(2 / 2**10))
    assert mcnemar_exact([1, 0], [1, 0]) == (0, 0, 1.0)  # no discordant image: no evidence
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_one_image_better_out_of_167_is_noise_not_an_improvement():
    cand, champ = pair(167, both_right=150, only_candidate=1, only_champion=0)
    # the old gates would promote it (accuracy +0.006 over a min_improvement of 0)
    gates = by_name(check_gates(cand, champ, PAIRED))
    assert gates["improvement"].passed
    paired = gates["paired"]
    assert not paired.passed and paired.value == pytest.approx(1.0) and paired.threshold == 0.05
    assert "b=1" in paired.detail and "c=0" in paired.detail and "not significant" in paired.detail
    # a few more of the same is still noise: 5 vs 1 has p = 0.22
    cand, champ = pair(167, both_right=150, only_candidate=5, only_champion=1)
    assert not by_name(check_gates(cand, champ, PAIRED))["paired"].passed


def test_a_clear_improvement_passes_the_paired_gate():
    cand, champ = pair(167, both_right=140, only_candidate=15, only_champion=2)
    paired = by_name(check_gates(cand, champ, PAIRED))["paired"]
    assert paired.passed and paired.value == pytest.approx(2 * (1 + 17 + 136) / 2**17)
    assert "b=15" in paired.detail and "c=2" in paired.detail and "significant improvement" in paired.detail
    # the same evidence the other way round: a clearly worse candidate fails although p is small
    worse = by_name(check_gates(champ, cand, PAIRED))["paired"]
    assert not worse.passed and worse.value < 0.05 and "not better" in worse.detail


def test_paired_gate_off_reports_the_evidence_and_passes():
    off = dataclasses.replace(PAIRED, paired_gate=False)
    cand, champ = pair(167, both_right=150, only_candidate=1, only_champion=0)
    paired = by_name(check_gates(cand, champ, off))["paired"]
    assert paired.passed and paired.threshold is None and paired.value == pytest.approx(1.0)
    assert "b=1" in paired.detail and "not enforced" in paired.detail
    # no champion: nothing to pair with
    assert by_name(check_gates(cand, None, PAIRED))["paired"].passed


def test_paired_gate_asked_for_but_without_correctness_fails():
    no_vector = scores(0.95, {"a": 0.95})
    gate = by_name(check_gates(no_vector, scores(0.85, {"a": 0.85}), PAIRED))["paired"]
    assert not gate.passed and gate.value is None
    # vectors of different test sets cannot be paired either
    gate = by_name(check_gates(paired_scores([True] * 5), paired_scores([False] * 4), PAIRED))["paired"]
    assert not gate.passed
