"""Where the out-of-fold models are fitted: one after another in this process, or one (fold, member)
per task on a Dask cluster (tasks.common.engine), all at once.

A fold fitter takes the members (tasks.checks.confident_learning.OofMember), the labels, the folds as
(train rows, test rows) and the number of classes, and yields per fold, in fold order, the fitted
member models and the fold's probabilities for its test rows (the mean over members). Both fitters
run the same member code on the same rows, so a fold gives the same model either way (up to the
floating-point order of a multi-threaded BLAS or torch on the driver versus a single-threaded worker).

On a cluster each member's data (features or images) is scattered to every worker once per fitter, and
each task receives the member without its data (OofMember.without_data) plus that data's future: a
task carries only row indices, never the images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tasks.checks.confident_learning import OofMember

Fold = tuple[np.ndarray, np.ndarray]  # (train rows, test rows)
FoldResult = tuple[list[Any], np.ndarray]  # (fitted models, one per member; probabilities [len(test), K])
FoldFitter = Callable[[Sequence["OofMember"], np.ndarray, Sequence[Fold], int], Iterator[FoldResult]]


def fit_member(member: OofMember, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, k: int):
    """One member trained on `train_idx`, and its probabilities [len(test_idx), k] for `test_idx`."""
    fitted = member.fit(labels, train_idx, k)
    return fitted, member.predict(fitted, member.data[test_idx], k)


def _fold_result(results: list[tuple[Any, np.ndarray]]) -> FoldResult:
    """The members' (fitted, probabilities) of one fold -> (fitted models, their mean probabilities)."""
    return [fitted for fitted, _ in results], np.mean([probs for _, probs in results], axis=0)


def fit_here(members: Sequence[OofMember], labels: np.ndarray, folds: Sequence[Fold], k: int) -> Iterator[FoldResult]:
    """The in-process fitter: fold after fold, member after member."""
    for train_idx, test_idx in folds:
        yield _fold_result([fit_member(m, labels, train_idx, test_idx, k) for m in members])


def _fit_member_task(shell: OofMember, data: np.ndarray, labels, train_idx, test_idx, k: int):
    """Engine task: the member `shell` given its scattered `data` back, then fit_member."""
    return fit_member(shell.with_data(data), labels, train_idx, test_idx, k)


class ClusterFolds:
    """The Dask fitter over an engine's distributed.Client (tasks.common.engine.Engine): every (fold,
    member) is a task, submitted together, so a cluster with W worker threads fits up to W of them at
    once. Data is scattered once per member and reused by later rounds (confident learning's second
    round) of the same fitter. Results are waited for through the engine, which fails the stage when
    every worker stays paused (a CNN fold can fill a worker's memory)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.client = engine.client
        # id(data) -> (data, its future); holding the data keeps its id from being reused
        self._scattered: dict[int, tuple[np.ndarray, Any]] = {}

    def _data_future(self, data: np.ndarray):
        if id(data) not in self._scattered:
            self._scattered[id(data)] = (data, self.client.scatter(data, broadcast=True, hash=False))
        return self._scattered[id(data)][1]

    def __call__(
        self, members: Sequence[OofMember], labels: np.ndarray, folds: Sequence[Fold], k: int
    ) -> Iterator[FoldResult]:
        datas = [self._data_future(m.data) for m in members]
        shells = [m.without_data() for m in members]
        labels_future = self.client.scatter(np.asarray(labels), broadcast=True, hash=False)
        futures = [
            [
                self.client.submit(_fit_member_task, shell, data, labels_future, train_idx, test_idx, k, pure=False)
                for shell, data in zip(shells, datas)
            ]
            for train_idx, test_idx in folds
        ]
        try:
            for fold in futures:
                yield _fold_result([self.engine.result(future) for future in fold])
        finally:  # an error or an abandoned generator: stop what is still running
            for fold in futures:
                for future in fold:
                    future.cancel()
