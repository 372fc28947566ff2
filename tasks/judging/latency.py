"""What an ensemble costs per image against one of its members (evaluate's report, `imgcls ensemble`'s
run): kept apart from tasks/judging/ensemble.py, which trains members, so evaluate does not depend on train."""

from __future__ import annotations

import time

import numpy as np


def p50_ms(predict, image: np.ndarray, calls: int = 15, warmup: int = 3) -> float:
    """Median wall time (ms) of predict(image[None]) after a warm-up."""
    for _ in range(warmup):
        predict(image[None])
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(image[None])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def latency_metrics(predictor, image: np.ndarray) -> dict[str, float]:
    """Single-image p50 latency of an ensemble's predict_proba and of its first member's (numbers of the
    machine it runs on: compare them with each other, not across machines)."""
    return {
        "ensemble/latency_p50_ms": p50_ms(predictor.predict_proba, image),
        "ensemble/member_latency_p50_ms": p50_ms(predictor.members[0].predict_proba, image),
        "ensemble/members": float(len(predictor.members)),
    }
