"""validate's last suspect-label fit, kept so a scheduled run does not train the out-of-fold models
again: on unchanged data the scores are reused as they are, and on slightly grown data only the new
images are scored, by the fold models of the last fit (tasks.validate decides when to refit).

What is kept (the latest fit only, under paths.cache/validate_suspects/; not versioned, safe to delete):
- `<key>.npz`: the scored images (ids, class index; `fitted` marks those the fit was trained on, the
  others were scored later by its fold models), their probabilities, the class names, the folds, and
  the name of the models folder;
- `fit-<token>/`: the fold models, `kernel.joblib` (scikit-learn pipelines, one per fold) and
  `cnn_fold<i>.safetensors` (the CNN's weights and input mean/std), whichever the settings use.

`key` covers everything the fold models depend on besides the data: the suspect_label settings that
shape them, the source of the modules that compute them (a code change is a miss) and the versions of
the libraries that do the arithmetic (an upgrade is a miss). An entry under another key is never read.
The models folder is written first, then the npz naming it, each atomically: a crash leaves the old
entry or an orphan folder (removed by the next save), never an npz with models of another fit."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.atomic import atomic_dir, atomic_path
from tasks.common.packages import installed_version

FOLDER = "validate_suspects"
# the modules that compute the scores, read as text (importing oof_cnn would import torch), relative to
# tasks/: the models and the decoding that feeds them (a change in either would mix old-model scores
# with new features, so any edit is a refit)
SOURCES = ("checks/confident_learning.py", "checks/oof_cnn.py", "../models/hog.py", "validate.py", "common/images.py")
LIBRARIES = ("torch", "scikit-learn", "numpy")
KERNEL_FILE = "kernel.joblib"


def settings_key(settings_json: str) -> str:
    """Key over the settings, the sources in SOURCES and the versions of LIBRARIES."""
    digest = hashlib.sha256()
    tasks_dir = Path(__file__).parent.parent
    sources = [(tasks_dir / name).read_text(encoding="utf-8") for name in SOURCES]
    versions = repr([installed_version(name) for name in LIBRARIES])
    for part in (settings_json, versions, *sources):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(image_ids, labels, settings_json: str) -> str:
    """Key of one exact scoring: the images and labels in order, and settings_key."""
    digest = hashlib.sha256()
    for part in ("\n".join(map(str, image_ids)), "\n".join(map(str, labels)), settings_key(settings_json)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class LastFit:
    """The kept fit. Rows are the images scored so far: the fitted ones (`fitted`), then any scored
    later by the fold models. `labels` index `classes`; probs [N, K] (out of fold, or out of sample)."""

    key: str
    image_ids: np.ndarray  # str [N]
    labels: np.ndarray  # int [N]
    fitted: np.ndarray  # bool [N]
    probs: np.ndarray  # float [N, K]
    classes: list[str]
    folds: int
    models_dir: Path

    @property
    def token(self) -> str:
        """Names this fit: the same token after a run that only scored new images with it."""
        return self.models_dir.name


def load(cache_dir: str | Path, key: str) -> LastFit | None:
    """The kept fit under `key`, or None (none, another key, unreadable: fit again)."""
    folder = Path(cache_dir) / FOLDER
    try:
        with np.load(folder / f"{key}.npz", allow_pickle=False) as stored:
            fit = LastFit(
                key=key,
                image_ids=np.char.decode(stored["image_ids"], "utf-8"),
                labels=stored["labels"].astype(np.int64),
                fitted=stored["fitted"].astype(bool),
                probs=stored["probs"],
                classes=[str(c) for c in stored["classes"]],
                folds=int(stored["folds"]),
                models_dir=folder / str(stored["models"]),
            )
    except (OSError, KeyError, ValueError, UnicodeDecodeError):  # missing or unreadable
        return None
    n = len(fit.image_ids)
    if not (len(fit.labels) == len(fit.fitted) == len(fit.probs) == n) or fit.probs.shape[1] != len(fit.classes):
        return None
    return fit


def load_fold_models(fit: LastFit, kinds: list[str]) -> list[list[Any]] | None:
    """fold_models[fold][member] for the member kinds in order ("kernel", "cnn"), or None when the
    folder is missing or incomplete (then the caller fits again)."""
    per_kind = []
    try:
        for kind in kinds:
            if kind == "kernel":
                import joblib  # a scikit-learn dependency; the cache is local, written by this code

                models = joblib.load(fit.models_dir / KERNEL_FILE)
            else:
                from safetensors.torch import load_file

                models = [load_file(fit.models_dir / f"cnn_fold{i}.safetensors") for i in range(fit.folds)]
            if len(models) != fit.folds:
                return None
            per_kind.append(models)
    except (OSError, ValueError, EOFError, KeyError, ImportError, AttributeError):
        return None
    return [list(fold) for fold in zip(*per_kind)]


def save_fit(
    cache_dir: str | Path,
    key: str,
    *,
    image_ids,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    kinds: list[str],
    fold_models: list[list[Any]],
) -> LastFit:
    """Keep a new fit (every row fitted) and its fold models; drop every other entry."""
    folder = Path(cache_dir) / FOLDER
    models_dir = folder / f"fit-{uuid.uuid4().hex[:16]}"
    with atomic_dir(models_dir) as tmp:
        for m, kind in enumerate(kinds):
            if kind == "kernel":
                import joblib

                joblib.dump([fold[m] for fold in fold_models], tmp / KERNEL_FILE)
            else:
                from safetensors.torch import save_file

                for i, fold in enumerate(fold_models):
                    save_file({name: t.contiguous() for name, t in fold[m].items()}, tmp / f"cnn_fold{i}.safetensors")
    fit = LastFit(
        key=key,
        image_ids=np.asarray(list(image_ids), dtype=str),
        labels=np.asarray(labels, dtype=np.int64),
        fitted=np.ones(len(labels), dtype=bool),
        probs=np.asarray(probs, dtype=np.float64),
        classes=list(classes),
        folds=len(fold_models),
        models_dir=models_dir,
    )
    save_scores(cache_dir, fit)
    return fit


def save_scores(cache_dir: str | Path, fit: LastFit) -> None:
    """Write `fit`'s npz (after new images were scored with its fold models: the same models folder),
    then remove entries of other fits."""
    folder = Path(cache_dir) / FOLDER
    with atomic_path(folder / f"{fit.key}.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                image_ids=np.char.encode(fit.image_ids.astype(str), "utf-8"),
                labels=fit.labels,
                fitted=fit.fitted,
                probs=fit.probs,
                classes=np.asarray(fit.classes, dtype=str),
                folds=np.int64(fit.folds),
                models=np.asarray(fit.models_dir.name),
            )
    for old in folder.glob("*.npz"):
        if old.stem != fit.key:
            old.unlink(missing_ok=True)
    for old in folder.glob("fit-*"):
        if old.name != fit.models_dir.name:
            shutil.rmtree(old, ignore_errors=True)
