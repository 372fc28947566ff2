"""Confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021) on out-of-fold probabilities, with cleanlab (>= 2.9, Apache-2.0) as the engine.

Inputs are out-of-fold predicted probabilities `probs` [N, K] (each row from a model that never saw
that example) and the given labels `labels` [N] in 0..K-1.

1.-2. cleanlab estimates per-class thresholds (the model's mean self-confidence per class) and the
   confident joint C[i, j]: examples labelled i whose confident class is j.
3. Label issues, by `method` (cleanlab.filter.find_label_issues' filter_by):
   - "confident_joint" (cleanlab's "confident_learning"): the off-diagonal of C, i.e. the confident
     class differs from the given label.
   - "prune_by_noise_rate" (default): from C calibrated to the class counts, for every off-diagonal
     cell (i, j) that many examples labelled i with the largest margin probs[j] - probs[i].
   - "both": flagged by both rules.
   cleanlab replaced this module's own implementation of the same rules: on the same probabilities it
   flags the same examples within 0.4 points, and its "both" finds 10 points more at the same precision
   (bench/cleanlab_engine.py, BENCHMARKS.md).
4. A floor on the given label's own probability (`max_given_probability`): an example is flagged only
   if the model gives its label less than this. The rules above count every confident disagreement,
   and on look-alike classes (shirt / T-shirt) a fair model disagrees with many correct labels; a
   real mislabel usually gets almost no probability for the label it was given.
   And the converse (`certain_below`): an example whose label gets less than this is flagged even when
   the rule does not pick it. prune_by_noise_rate removes from each (given, true) cell as many examples
   as the cell's estimated count; a uniform flip lands in a cell that holds one or two of them and is
   often estimated empty, so a T-shirt labelled "sandal" with p = 0.007 went unflagged. Tuned on
   Fashion-MNIST's train part (bench/data_quality.py, BENCHMARKS.md): at 0.02 it added 6 of 83 planted
   flips and no other image; re-tuned on the same part after the near-duplicate rule changed which
   images reach validate, 0.03 added 3 more flips and no other image (0.04: one other image).
5. Optionally a second round (`retrain`): the models are fitted again without the examples the first
   round flagged, so a mislabelled training example no longer teaches the model that, say, a bag may be
   a coat; the flagged examples are still scored, out of fold, and the rule is applied again.

The out-of-fold probabilities are the mean of one or more models: `kernel_model` on HOG features
(models.hog) of a 32x32 grayscale copy plus downsampled RGB pixels (`image_features`), and a small CNN
(tasks.checks.oof_cnn); tasks.validate picks them (suspect_label.model).

The fold models of the last round are kept (`fit_suspect_labels`): an image none of them saw is scored
out of sample by their mean (`score_unseen`), so a run on slightly grown data need not fit them again.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from models.hog import hog_features
from tasks.checks.oof_folds import FoldFitter, fit_here

log = logging.getLogger(__name__)
Method = Literal["prune_by_noise_rate", "confident_joint", "both"]


class OofMember:
    """One kind of out-of-fold model over its own data (`data`: one row per example, features or
    images). Split into fit and predict so the fitted fold models can be kept and applied to images
    that arrive later; calling it with (labels, train rows, test rows, number of classes) fits
    one fold and returns the test rows' probabilities."""

    kind = "member"

    def __init__(self, data: np.ndarray) -> None:
        self._set_data(data)

    def fit(self, labels: np.ndarray, train_idx: np.ndarray, num_classes: int) -> Any:
        """A fold model trained on the rows `train_idx`."""
        raise NotImplementedError

    def predict(self, fitted: Any, data: np.ndarray, num_classes: int) -> np.ndarray:
        """Probabilities [len(data), num_classes] of `fitted` on `data` (rows like self.data)."""
        raise NotImplementedError

    def __call__(self, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, num_classes: int) -> np.ndarray:
        return self.predict(self.fit(labels, train_idx, num_classes), self.data[test_idx], num_classes)

    def without_data(self) -> OofMember:
        """A copy with every setting but no data, to send to a worker (tasks.checks.oof_folds), where
        with_data gives the data back. Settings derived from the whole data (the CNN's input mean and
        std) stay, so a worker's fold model is the one this process would fit."""
        shell = copy.copy(self)
        shell._set_data(None)
        return shell

    def with_data(self, data: np.ndarray) -> OofMember:
        member = copy.copy(self)
        member._set_data(data)
        return member

    def _set_data(self, data: np.ndarray | None) -> None:
        self.data = data


@dataclass
class OofFit:
    """What `fit_suspect_labels` found: out-of-fold probabilities [N, K], the label-issue mask [N], and
    the fold models of the round that gave the probabilities (fold_models[fold][member], in the order
    of the members passed in)."""

    probs: np.ndarray
    issues: np.ndarray
    fold_models: list[list[Any]]


# The out-of-fold model's size. Measured on Fashion-MNIST (bench/data_quality.py): more components
# gain nothing, fewer cost accuracy; a moderate C keeps the probabilities of ambiguous images away from
# 0 (a sharper model pushes correct but unusual images down among the real mislabels).
PCA_COMPONENTS = 60
HOG_SIZE = 32  # the gray copy image_features takes HOG of
KERNEL_COMPONENTS = 800
INVERSE_REGULARIZATION = 3.0
# Images whose full features fit the label-free projection (fit_projection): enough to place 60
# principal axes; the driver holds this many images' full features at most.
PROJECTION_SAMPLE = 10_000
PREDICT_CHUNK = 20_000  # rows scored at a time: the kernel map of a large fold never sits in memory whole
MIN_KEPT_PER_CLASS = 100  # a fold trained on a budget keeps at least this many of each class (all if fewer)


# validate.suspect_label.method -> cleanlab's filter_by
CLEANLAB_FILTER = {
    "prune_by_noise_rate": "prune_by_noise_rate",
    "confident_joint": "confident_learning",
    "both": "both",
}


def find_label_issues(
    probs: np.ndarray,
    labels: np.ndarray,
    method: Method = "prune_by_noise_rate",
    max_given_probability: float = 1.0,
    certain_below: float = 0.0,
) -> np.ndarray:
    """Boolean mask of examples whose given label is likely wrong: flagged by `method` (cleanlab) and
    given less than `max_given_probability` for their own label (1.0: no floor), or given less than
    `certain_below` whatever the method says (0: off; module docstring, step 4)."""
    from cleanlab.filter import find_label_issues as cleanlab_label_issues

    if method not in CLEANLAB_FILTER:
        raise ValueError(f"unknown confident-learning method {method!r}")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return np.zeros(0, dtype=bool)
    # n_jobs=1: cleanlab's per-class pool would fork this process (a Dask worker, a Prefect task) for
    # work that takes milliseconds
    issues = cleanlab_label_issues(labels=labels, pred_probs=probs, filter_by=CLEANLAB_FILTER[method], n_jobs=1)
    given = probs[np.arange(len(labels)), labels]
    return (np.asarray(issues, dtype=bool) & (given < max_given_probability)) | (given < certain_below)


def fit_suspect_labels(
    models: Sequence[OofMember],
    labels: np.ndarray,
    *,
    folds: int,
    seed: int,
    method: Method,
    max_given_probability: float,
    retrain: bool,
    certain_below: float = 0.0,
    fit_folds: FoldFitter = fit_here,
) -> OofFit:
    """Out-of-fold probabilities [N, K] averaged over `models`, the label-issue mask [N] and the fold
    models of the round that gave them: with `retrain` the second round's, fitted without the first
    round's issues (module docstring, step 5), so images added later can be scored by them (score_unseen).
    `fit_folds` fits the folds (tasks.checks.oof_folds: here, or on a Dask cluster)."""
    fold_models: list[list[Any]] = []
    probs = out_of_fold_probabilities(models, labels, folds, seed, fold_models=fold_models, fit_folds=fit_folds)
    issues = find_label_issues(probs, labels, method, max_given_probability, certain_below)
    if retrain and issues.any():
        fold_models = []
        probs = out_of_fold_probabilities(
            models, labels, folds, seed, exclude=issues, fold_models=fold_models, fit_folds=fit_folds
        )
        issues = find_label_issues(probs, labels, method, max_given_probability, certain_below)
    return OofFit(probs, issues, fold_models)


def score_unseen(
    members: Sequence[OofMember], fold_models: list[list[Any]], data: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Probabilities [M, K] of M images that no fold model saw: the mean over folds and members
    (data[m] holds the images as member m takes them). Out of sample for every fold, so these rank
    with the out-of-fold probabilities of the fitted images."""
    per_fold = [
        np.mean([m.predict(fitted, d, num_classes) for m, fitted, d in zip(members, fold, data)], axis=0)
        for fold in fold_models
    ]
    return np.mean(per_fold, axis=0)


def image_features(gray: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Features of the out-of-fold model: HOG with 4x4 and 8x8 cells of grayscale images [N, 32, 32],
    then small RGB images [N, S, S, 3] (0..255) as luminance and two colour differences, scaled to
    0..1. On grayscale data the colour differences are constant, so after standardization they weigh
    nothing, and the pixels do not outweigh the HOG threefold as raw RGB would."""
    gray = np.asarray(gray, dtype=np.float32)
    rgb = np.asarray(rgb, dtype=np.float32).reshape(len(gray), -1, 3) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return np.hstack([hog_features(gray, 4, 9), hog_features(gray, 8, 9), luminance, r - g, b - (r + g) / 2])


def kernel_inputs(image, pixel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """What image_features takes of one decoded PIL image: a 32x32 gray copy and `pixel_size`^2 RGB pixels."""
    from tasks.common.images import to_array

    return to_array(image, HOG_SIZE, 1)[:, :, 0], to_array(image, pixel_size, 3)


def kernel_features(images: Sequence, pixel_size: int) -> np.ndarray:
    """kernel_model's features [N, D] of decoded PIL images (kernel_inputs, then image_features)."""
    gray, rgb = zip(*(kernel_inputs(image, pixel_size) for image in images))
    return image_features(np.stack(gray), np.stack(rgb))


def out_of_fold_probabilities(
    models: Sequence[OofMember],
    labels: np.ndarray,
    folds: int,
    seed: int,
    exclude: np.ndarray | None = None,
    fold_models: list[list[Any]] | None = None,
    fit_folds: FoldFitter = fit_here,
) -> np.ndarray:
    """Predicted probabilities [N, K] for every example, the mean over `models` each trained on the
    other folds (stratified K-fold), leaving the examples in `exclude` (bool [N]) out of every training
    set. Every class needs at least `folds` examples. With a `fold_models` list each fold's fitted
    models are appended. `fit_folds` says where the folds are fitted (tasks.checks.oof_folds)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for train_idx, test_idx in splitter.split(np.zeros(len(labels)), labels):
        kept = train_idx if exclude is None else train_idx[~exclude[train_idx]]
        if np.unique(labels[kept]).size >= 2:  # a fold needs two classes to fit anything
            train_idx = kept
        splits.append((train_idx, test_idx))
    round_ = "without the first round's suspects" if exclude is not None else "first round"
    with Progress(folds, f"validate: out-of-fold models ({round_})", "fold", every=0.0) as progress:
        for (_, test_idx), (fitted, fold_probs) in zip(splits, fit_folds(models, labels, splits, k)):
            if fold_models is not None:
                fold_models.append(fitted)
            probs[test_idx] = fold_probs
            progress.update()
    return probs


class Progress:
    """Progress of a long loop with an estimate of the time left: a tqdm bar on a terminal; elsewhere
    (a pipe, a log file, the Prefect flow) a logged line after a step when `every` seconds have passed
    since the last one (0: every step), and always after the last. The estimate is the mean time per
    step so far times the steps left."""

    def __init__(self, total: int, desc: str, unit: str, *, every: float = 10.0, leave: bool = True):
        self.total, self.desc, self.unit, self.every = max(int(total), 1), desc, unit, every
        self.done, self.started = 0, time.perf_counter()
        self.last_logged = self.started
        self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=leave) if sys.stderr.isatty() else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.done < self.total and now - self.last_logged < self.every:
            return
        self.last_logged = now
        elapsed = now - self.started
        left = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s: %s %d/%d, %.1f s so far, %s",
            self.desc,
            self.unit,
            self.done,
            self.total,
            elapsed,
            f"~{left:.0f} s left" if self.done < self.total else "done",
        )


def kernel_model(features: np.ndarray, seed: int, budget: int | None = None) -> KernelMember:
    """The fast member: standardize -> whitened PCA -> RBF kernel approximation (Nystroem) -> logistic
    regression on `features` (image_features, or their projection: fit_projection); about as accurate
    as an RBF SVM at a fraction of the cost (Fashion-MNIST, 2,400 training images: 0.86). A fold
    trains on at most `budget` images (budget_rows; None: all)."""
    return KernelMember(features, seed, budget)


class KernelMember(OofMember):
    """kernel_model's member; a fold model is a fitted scikit-learn pipeline."""

    kind = "kernel"

    def __init__(self, features: np.ndarray, seed: int, budget: int | None = None) -> None:
        super().__init__(features)
        self.seed, self.budget = seed, budget

    def fit(self, labels: np.ndarray, train_idx: np.ndarray, num_classes: int):
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        labels = np.asarray(labels)
        if self.budget is not None:
            train_idx = budget_rows(train_idx, labels, self.budget, self.seed)
        # The matrices are small: multi-threaded BLAS only adds overhead, and on a busy machine it made
        # a 2 s run take 30 s (threads fighting for cores).
        with threadpool_limits(limits=1):
            return _fit_kernel(self.data[train_idx], labels[train_idx], self.seed)

    def predict(self, fitted, data: np.ndarray, num_classes: int) -> np.ndarray:
        """Probabilities [len(data), num_classes] (0 for a class the fold never saw)."""
        from threadpoolctl import threadpool_limits

        probs = np.zeros((len(data), num_classes))
        with threadpool_limits(limits=1):
            for start in range(0, len(data), PREDICT_CHUNK):
                probs[start : start + PREDICT_CHUNK, fitted.classes_] = fitted.predict_proba(
                    data[start : start + PREDICT_CHUNK]
                )
        return probs


def budget_rows(rows: np.ndarray, labels: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """At most about `budget` of `rows` (sorted), each class in its share of them but never fewer than
    MIN_KEPT_PER_CLASS (a whole class when it has fewer): a rare class is never sampled away, which
    would leave its images with no probability for their own label and every one of them suspect."""
    rows = np.asarray(rows)
    if len(rows) <= budget:
        return rows
    rng = np.random.default_rng(seed)
    share = budget / len(rows)
    kept = []
    for cls in np.unique(labels[rows]):
        members = rows[labels[rows] == cls]
        take = min(len(members), max(MIN_KEPT_PER_CLASS, round(len(members) * share)))
        kept.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(kept))


def fit_projection(features: np.ndarray, seed: int):
    """A label-free projection of image_features [N, D] onto their PCA_COMPONENTS principal axes
    (standardized first), fitted on `features` (a sample of the data set's images: PROJECTION_SAMPLE).
    Large data sets keep every image's projection instead of its ~2,900 features (240 bytes instead of
    11 KB an image); no label is involved, so fitting it on images of every fold leaks nothing."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return make_pipeline(StandardScaler(), PCA(n_components=_pca_components(features), random_state=seed)).fit(
            features
        )


def _pca_components(features: np.ndarray) -> int:
    """PCA_COMPONENTS, fewer when `features` [N, D] has fewer dimensions or rows to give."""
    return max(1, min(PCA_COMPONENTS, features.shape[1], len(features) - 1))


def project(projection, features: np.ndarray) -> np.ndarray:
    """`features` [N, D] through a fit_projection result, as float32 [N, components]."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return projection.transform(features).astype(np.float32)


def with_projection(projection, fold_model):
    """A kernel fold model fitted on projected features, as one pipeline that takes image_features:
    what is kept for scoring images that arrive later (their full features are few)."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("projection", projection), ("fold_model", fold_model)])


def _fit_kernel(features: np.ndarray, labels: np.ndarray, seed: int):
    from sklearn.decomposition import PCA
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_train = len(features)
    components = _pca_components(features)
    model = make_pipeline(
        StandardScaler(),
        PCA(n_components=components, whiten=True, random_state=seed),
        # gamma ~ 1 / (2 * dims): whitened points are ~sqrt(2 * dims) apart, so the kernel neither
        # saturates nor flattens
        Nystroem(gamma=0.5 / components, n_components=min(KERNEL_COMPONENTS, n_train), random_state=seed),
        LogisticRegression(C=INVERSE_REGULARIZATION, max_iter=1000),
    )
    return model.fit(features, labels)
