"""Unsupervised grouping of embeddings, and a proposed label per group.

The number of groups comes from a silhouette sweep over k-means solutions (k from k_min to k_max),
not from ISODATA's split/merge: ISODATA needs a minimum group size, a split spread and a merge distance,
three thresholds in the units of the embedding that would have to be tuned per embedder and data set;
the sweep has only the range of k to give and scores each k on the data itself. For large sets the
silhouette is computed on a fixed random sample (it is quadratic in n), k-means on all images."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

K_MIN, K_MAX = 2, 15


def k_range(known_classes: int = 0) -> tuple[int, int]:
    """The k the sweep tries. With known classes (the labelled data's, or the model's) at least one
    group per class: the silhouette prefers the coarsest split (on Fashion-MNIST k=2, footwear and bags
    against clothes, over k=10: bench/grouping.py), and a group that mixes classes cannot be accepted as
    one label while an over-split class costs only a second accept-group. Without classes: 2..K_MAX."""
    low = max(K_MIN, known_classes)
    return low, max(K_MAX, low + 10)


SILHOUETTE_SAMPLE = 3000  # images the silhouette of each k is measured on (O(n^2) memory and time)


@dataclass
class Grouping:
    labels: np.ndarray  # group per row, 0..k-1
    k: int
    silhouettes: dict[int, float]  # k -> silhouette (empty when there was nothing to choose)


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    # one k-means++ start (scikit-learn's default): the sweep already runs k-means once per k
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)


def sweep(x: np.ndarray, k_min: int = K_MIN, k_max: int = K_MAX, seed: int = 0) -> Grouping:
    """k-means for every k in [k_min, k_max] (capped below the number of distinct points); the k with the
    largest (sampled) silhouette wins, the smaller k on a tie. Silhouette over ISODATA: see the module's
    docstring; its bias towards coarse splits is what k_range()'s lower bound is for."""
    from sklearn.metrics import silhouette_score

    n = len(x)
    distinct = len(np.unique(x.round(6), axis=0)) if n else 0
    top = min(k_max, distinct - 1, n - 1)
    if top < 2:  # nothing to choose between: one group (or none)
        return Grouping(np.zeros(n, dtype=int), 1 if n else 0, {})
    sample = min(n, SILHOUETTE_SAMPLE)
    best, scores = None, {}
    for k in range(min(max(k_min, 2), top), top + 1):  # fewer images than k_min: as many groups as fit
        labels = kmeans(x, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(x, labels, sample_size=sample, random_state=seed))
        if best is None or scores[k] > scores[best.k]:
            best = Grouping(labels, k, scores)
    if best is None:
        return Grouping(np.zeros(n, dtype=int), 1, scores)
    best.silhouettes = scores
    return best


def knn_labels(labelled: np.ndarray, labels: np.ndarray, x: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row of x: the majority label of its k nearest labelled neighbours (Euclidean); a tie goes to
    the label of the nearest neighbour among the tied ones."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels).astype(str)
    k = min(k, len(labelled))
    _, idx = NearestNeighbors(n_neighbors=k).fit(labelled).kneighbors(x)
    out = []
    for row in idx:
        votes = Counter(labels[row])
        top = max(votes.values())
        out.append(next(labels[j] for j in row if votes[labels[j]] == top))  # nearest first
    return np.asarray(out, dtype=object)


@dataclass(frozen=True)
class Proposal:
    label: str  # "" when there is nothing to propose from
    confidence: float  # share of the group's members whose own label is `label` (nan without a proposal)
    size: int


def propose(groups: np.ndarray, member_labels: np.ndarray | None) -> dict[int, Proposal]:
    """Per group: the most common of its members' labels (the model's prediction, or the kNN label)
    and the share of members agreeing; ties go to the alphabetically first label (deterministic)."""
    out = {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if member_labels is None or len(members) == 0:
            out[int(g)] = Proposal("", float("nan"), len(members))
            continue
        votes = Counter(str(v) for v in member_labels[members])
        label = min(votes, key=lambda lab: (-votes[lab], lab))
        out[int(g)] = Proposal(label, votes[label] / len(members), len(members))
    return out
