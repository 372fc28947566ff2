"""Classification metrics from integer labels and class probabilities. Pure functions (numpy in,
numbers and DataFrames out); the label metrics are scikit-learn's, calibration is computed here."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Metrics that need only predicted labels (so they also apply to a classifier without probabilities)."""
    labels = np.arange(n_classes)
    out = {
        "acc": skm.accuracy_score(y_true, y_pred),
        # sklearn warns when y_pred holds a class absent from y_true (small val splits); the score is still right
        "balanced_acc": _quiet(skm.balanced_accuracy_score, y_true, y_pred),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        out |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    return {k: float(v) for k, v in out.items()}


def probability_metrics(y_true: np.ndarray, proba: np.ndarray, top_k: int, bins: int) -> dict[str, float]:
    return {
        f"top{top_k}_acc": top_k_accuracy(y_true, proba, top_k),
        "log_loss": float(skm.log_loss(y_true, proba, labels=np.arange(proba.shape[1]))),
        "ece": expected_calibration_error(y_true, proba, bins),
    }


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, top_k: int, bins: int) -> dict[str, float]:
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    return label_metrics(y_true, proba.argmax(axis=1), proba.shape[1]) | probability_metrics(y_true, proba, top_k, bins)


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k most probable (as sklearn's
    top_k_accuracy_score, which rejects the two-class case this one accepts)."""
    order = np.argsort(proba, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((order == np.asarray(y_true)[:, None]).any(axis=1).mean())


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), average=None, zero_division=0
    )
    return pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s.astype(int)})


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts (rows = true class, columns = predicted) and the row-normalized matrix (rows of a class
    absent from y_true stay zero instead of NaN)."""
    counts = skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    return counts, normalized


def reliability_table(y_true: np.ndarray, proba: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width bins over the top-class confidence (see reliability_bins)."""
    proba = np.asarray(proba, dtype=np.float64)
    return reliability_bins(proba.max(axis=1), proba.argmax(axis=1) == np.asarray(y_true), bins)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Bin i holds confidences in (i/bins, (i+1)/bins] (the first bin also holds 0). Empty bins have
    count 0 and NaN confidence/accuracy. The one binning behind the reliability plot and every ECE."""
    confidence = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_conf, "accuracy": accuracy}
    )


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """ECE of class probabilities [N, C] against integer labels."""
    proba = np.asarray(proba, dtype=np.float64)
    return calibration_error(proba.max(axis=1), proba.argmax(axis=1) == np.asarray(y_true), bins)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE = sum over bins of (bin share of samples) * |accuracy - mean confidence|."""
    table = reliability_bins(confidence, correct, bins)
    filled = table[table["count"] > 0]
    gap = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gap).sum() / table["count"].sum())


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)
