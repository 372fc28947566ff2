"""Temperature scaling (Guo et al., 2017): one scalar T > 0 that divides every logit before the softmax,
fitted after training on the validation split by minimising the negative log-likelihood. Dividing by
T changes no argmax, so accuracy and every label metric stay exactly as they were; only confidence
moves (T > 1 softens an over-confident model, T < 1 sharpens an under-confident one, e.g. one trained
with label smoothing).

T is saved in the model's stats (stats["temperature"]) and applied by models.predictor.Predictor, so
evaluate, the pyfunc, predict and the ONNX graph (models.onnx_export) all use it; a model saved before
it existed has no key and predicts with T = 1. Used by train; not part of the shipped pyfunc (the
Predictor only reads the number).

Logits come as [views, N, C] (Predictor.logits): with test_time_flip the model's probability is the
mean over the image and its mirror of softmax(logits / T), and T is fitted on exactly that."""

from __future__ import annotations

import math

import numpy as np

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TOLERANCE = 1e-6  # on log T: T to about six significant digits


def _views(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:
        return logits[None]
    if logits.ndim != 3:
        raise ValueError(f"expected logits [N, C] or [views, N, C], got shape {logits.shape}")
    return logits


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 [N, C]: the mean over views of softmax(logits / temperature), as Predictor computes it."""
    scaled = _views(logits) / float(temperature)
    scaled -= scaled.max(axis=2, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=2, keepdims=True)).mean(axis=0)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean -log p(true class) at this temperature."""
    proba = probabilities(logits, temperature)
    picked = proba[np.arange(len(proba)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(picked, 1e-300, None)).mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (MIN_TEMPERATURE, MAX_TEMPERATURE)
) -> float:
    """The T in `bounds` that minimises the NLL of `labels` (integer class indices) under
    softmax(logits / T): golden-section search on log T. With one view the NLL is convex in 1/T, so
    unimodal in log T and the search finds the global minimum; a result no better than T = 1 (or no
    data) gives 1.0, so scaling never makes the fit worse on the data it was fitted on.

    When every val image is already right, the NLL has no minimum: it keeps falling as T -> 0, and the
    search used to return the lower bound, making the model certain (p = 1.0 / 0.0, wrong answers
    included: 6 of 8 digits seeds). Then T is confidence_matched instead."""
    views = _views(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if views.shape[1] == 0:
        return 1.0
    if views.shape[1] != len(labels):
        raise ValueError(f"{views.shape[1]} rows of logits for {len(labels)} labels")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    if not low < high:
        raise ValueError(f"temperature bounds must be increasing and > 0, got {bounds}")

    if (probabilities(views).argmax(axis=1) == labels).all():
        return confidence_matched(views, len(labels), bounds)

    def loss(log_t: float) -> float:
        return negative_log_likelihood(views, labels, math.exp(log_t))

    a, b = low, high
    x1, x2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f1, f2 = loss(x1), loss(x2)
    while b - a > _TOLERANCE:
        if f1 <= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - _GOLDEN * (b - a)
            f1 = loss(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + _GOLDEN * (b - a)
            f2 = loss(x2)
    best = (a + b) / 2.0
    temperature = float(min(max(math.exp(best), bounds[0]), bounds[1]))
    return temperature if loss(math.log(temperature)) < loss(0.0) else 1.0


def confidence_matched(
    logits: np.ndarray, n_right: int, bounds: tuple[float, float] = (MIN_TEMPERATURE, MAX_TEMPERATURE)
) -> float:
    """The T at which the mean top probability equals (n + 1) / (n + 2): the accuracy to expect after n
    right answers out of n (Laplace's rule of succession), the most a calibrated model may claim on the
    evidence of a val split it gets entirely right. The mean top probability falls as T grows; bisection
    on log T within `bounds` (a bound when the target lies beyond it)."""
    target = (n_right + 1) / (n_right + 2)

    def confidence(log_t: float) -> float:
        return float(probabilities(logits, math.exp(log_t)).max(axis=1).mean())

    low, high = math.log(bounds[0]), math.log(bounds[1])
    if confidence(low) <= target:
        return float(bounds[0])
    if confidence(high) >= target:
        return float(bounds[1])
    while high - low > _TOLERANCE:
        middle = (low + high) / 2.0
        low, high = (middle, high) if confidence(middle) > target else (low, middle)
    return float(math.exp((low + high) / 2.0))
