"""Classical baseline the CNN must beat: histogram-of-oriented-gradients features (Dalal & Triggs)
with a linear SVM, logistic regression or k-nearest neighbours from scikit-learn, trained on the
prepared train split and logged as its own MLflow run (tag stage=baseline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from tqdm import tqdm

from models.hog import HogSpec
from tasks.common.errors import UserError
from tasks.common.params import Strict
from tasks.common.prepared import PreparedStore
from tasks.common.versioning import git_commit
from tasks.judging.metrics import label_metrics, probability_metrics

# Images are turned into features a chunk at a time so that a large memory-mapped store is never
# materialized whole.
_CHUNK = 1024


class BaselineParams(Strict):
    enabled: bool = True
    kind: Literal["hog_svm", "logreg", "knn"] = "hog_svm"  # classifier on the HOG features
    image_size: int = Field(32, ge=8)  # images are resized (grayscale) to this first
    cells: int = Field(4, ge=2)  # HOG cells per image side
    orientations: int = Field(9, ge=2)  # unsigned gradient bins over 0..180 degrees

    @model_validator(mode="after")
    def _cells_fit(self):
        if self.cells > self.image_size // 2:
            raise ValueError(f"cells ({self.cells}) must be at most image_size / 2 ({self.image_size // 2})")
        return self


def hog_spec(params: BaselineParams) -> HogSpec:
    # HOG needs a whole number of pixels per cell
    return HogSpec(params.image_size // params.cells * params.cells, params.cells, params.orientations)


def features(images: np.ndarray, rows: np.ndarray, params: BaselineParams) -> np.ndarray:
    spec = hog_spec(params)
    chunks = [
        spec.features(images[rows[i : i + _CHUNK]])
        for i in tqdm(range(0, len(rows), _CHUNK), desc="baseline features", unit="chunk", disable=None)
    ]
    return np.concatenate(chunks)


def make_classifier(kind: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # HOG blocks are already L2-normalized, so the SVM and kNN use them as they are (the SVM converges
    # in a fraction of the time it needs on standardized features); lbfgs needs standardized inputs.
    if kind == "hog_svm":
        return make_pipeline(LinearSVC(C=1.0))
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return make_pipeline(KNeighborsClassifier(n_neighbors=5))


def fit_on_train(params: BaselineParams, store: PreparedStore):
    """(the classifier `params.kind` fitted on the HOG features of the train split, that split's rows)."""
    train = store.split("train")
    if train["label_idx"].nunique() < 2:
        raise UserError("baseline: the train split needs images of at least two classes")
    model = make_classifier(params.kind)
    model.fit(features(store.images, train["row"].to_numpy(), params), train["label_idx"].to_numpy())
    return model, train


def run_baseline(
    params: BaselineParams,
    store: PreparedStore,
    *,
    splits: list[str],
    dataset_version: str,
    top_k: int,
    bins: int,
    experiment_id: str | None = None,
) -> dict:
    """Fit on the train split, score `splits`, log everything as one MLflow run (tracking URI and
    experiment as already configured by the caller). Returns {"run_id", "seconds", "metrics"} with
    metric keys like "test/acc"; probability metrics only for classifiers that give probabilities."""
    import mlflow
    import mlflow.sklearn

    started = time.perf_counter()
    model, train = fit_on_train(params, store)

    metrics: dict[str, float] = {}
    for split in splits:
        frame = store.split(split)
        if frame.empty:
            continue
        x = features(store.images, frame["row"].to_numpy(), params)
        y = frame["label_idx"].to_numpy()
        scores = label_metrics(y, model.predict(x), len(store.classes))
        if hasattr(model, "predict_proba"):
            scores |= probability_metrics(y, _full_proba(model, x, len(store.classes)), top_k, bins)
        metrics |= {f"{split}/{name}": value for name, value in scores.items()}
    seconds = time.perf_counter() - started

    tags = {"stage": "baseline", "dataset_version": dataset_version, "git_commit": git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline-{params.kind}", tags=tags) as run:
        mlflow.log_params(params.model_dump() | {"n_train": len(train), "n_classes": len(store.classes)})
        mlflow.log_metrics(metrics | {"seconds": seconds})
        mlflow.log_dict({"classes": store.classes}, "classes.json")
        # skops format: loading it never unpickles arbitrary code. Requirements are stated, because
        # inferring them loads the model in a subprocess and costs ~10 s per run.
        mlflow.sklearn.log_model(model, name="model", serialization_format="skops", pip_requirements=_requirements())
    return {"run_id": run.info.run_id, "seconds": seconds, "metrics": metrics}


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy")]


def _full_proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba columns follow the classes seen in training; spread them over all classes."""
    proba = np.zeros((len(x), n_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    # float32 features give float32 probabilities whose rows miss 1 by more than log_loss tolerates
    return proba / proba.sum(axis=1, keepdims=True)


def linear_arrays(model, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted hog_svm or logreg pipeline as (coef [n_classes, F], intercept [n_classes]) such that
    x @ coef.T + intercept are its decision values for every class (a StandardScaler folded in; a
    two-class model's single score split as -z/2, +z/2, whose softmax is the same sigmoid(z))."""
    classifier = model.steps[-1][1]
    coef = np.asarray(classifier.coef_, np.float64)
    intercept = np.asarray(classifier.intercept_, np.float64)
    if len(model.steps) == 2:  # StandardScaler, then the classifier: w.(x - m)/s = (w/s).x - w.(m/s)
        scaler = model.steps[0][1]
        intercept = intercept - coef @ (scaler.mean_ / scaler.scale_)
        coef = coef / scaler.scale_
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    # a class the train split lacks can never win: a decision value far below any real one
    full_coef = np.zeros((n_classes, coef.shape[1]))
    full_intercept = np.full(n_classes, -1e4)
    full_coef[classifier.classes_], full_intercept[classifier.classes_] = coef, intercept
    return full_coef, full_intercept


LINEAR_KINDS = ("hog_svm", "logreg")


def require_linear(params: BaselineParams) -> None:
    if params.kind not in LINEAR_KINDS:
        raise UserError(
            f"a {params.kind} baseline can't be an ensemble member: only {' and '.join(LINEAR_KINDS)} are linear "
            "(set evaluate.baseline.kind)"
        )


def fit_hog_member(params: BaselineParams, store: PreparedStore, target: Path) -> Path:
    """The baseline as an ensemble member: the classifier fitted on the train split, folded into arrays
    (models.hog.HogLinearPredictor; nothing to unpickle), its temperature fitted on the val split as
    train fits a CNN's; saved into `target`."""
    from models.calibration import fit_temperature
    from models.hog import HogLinearPredictor, save_hog_linear

    require_linear(params)
    model, _ = fit_on_train(params, store)
    coef, intercept = linear_arrays(model, len(store.classes))
    stats = {"image_size": int(store.images.shape[1]), "channels": int(store.images.shape[3])}
    member = HogLinearPredictor(
        hog_spec(params), coef.astype(np.float32), intercept.astype(np.float32), store.classes, stats
    )
    val = store.split("val")
    if not val.empty:
        logits = member.logits(np.asarray(store.images[val["row"].to_numpy()]))
        member.stats["temperature"] = fit_temperature(logits, val["label_idx"].to_numpy())
    return save_hog_linear(target, member)
