"""Uncertainty sampling: which unlabelled images a person should label next. Margin sampling (Scheffer
et al. 2001): the smaller the gap between the two most probable classes, the closer the image sits to a
decision boundary and the more its label moves the classifier."""

from __future__ import annotations

import numpy as np


def margins(probs: np.ndarray) -> np.ndarray:
    """top-1 minus top-2 probability per row (1.0 with a single class)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def pick_next(margin: np.ndarray, keys: list[str], n: int) -> np.ndarray:
    """Indices of the n smallest margins; equal margins (to 1e-9) in the order of their keys, so the
    same data always gives the same picks."""
    rounded = np.round(np.asarray(margin, dtype=np.float64), 9)
    order = np.lexsort((np.asarray(keys, dtype=object).astype(str), rounded))
    return order[: max(0, n)]


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """The classifier of the embeddings when there is no model: standardized logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5, random_state=seed)).fit(x, y)


def top_two(probs: np.ndarray, classes: list[str]) -> tuple[list[str], list[str]]:
    """(most probable class, runner-up) per row."""
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
    second = order[:, 1] if probs.shape[1] > 1 else order[:, 0]
    return [classes[i] for i in order[:, 0]], [classes[i] for i in second]
