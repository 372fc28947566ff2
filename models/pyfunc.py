"""The MLflow pyfunc model: DataFrame column `image` (a file path or base64 of the file bytes) in,
`label`, `score`, `top_k` (JSON [[label, score], ...]) and `error` out. Decoding, EXIF orientation,
mode normalization, resizing, normalization and class names all live inside the model.

Saved as MLflow "models from code" (models/pyfunc_entry.py). Its code is the inference part of models/
(SHIPPED_MODELS) plus the small shared base it imports (tasks/common/ errors, images, packages): loading
never unpickles anything, works from a plain Python session, and needs only the packages in REQUIREMENTS
(tests/unit/test_portable_model.py loads it with Lightning, scipy, scikit-learn, albumentations, Prefect,
DVC and torchvision unimportable, and checks REQUIREMENTS against the shipped code's imports)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from models.contract import OUTPUT_COLUMNS, error_row
from models.ensemble import ENSEMBLE_DIR, EnsemblePredictor, load_ensemble
from models.predictor import Predictor, predictor_from_files
from tasks.common.images import DecodeError, decode, to_array
from tasks.common.packages import installed_version

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
MODELS_DIR = Path(__file__).parent
TASKS_DIR = MODELS_DIR.parent / "tasks"
# The only tasks/ modules the shipped code imports; a wiring test keeps this list equal to the imports.
SHIPPED_BASE = ("common/errors.py", "common/images.py", "common/packages.py")
# The models/ modules inference needs (training code, which imports Lightning and albumentations, stays
# behind); test_portable_model keeps this equal to the shipped code's import closure.
SHIPPED_MODELS = ("__init__.py", "contract.py", "ensemble.py", "hog.py", "networks.py", "predictor.py", "pyfunc.py")
MAX_PIXELS = 40_000_000  # refuse decompression bombs before allocating them (clean's default limit)
TOP_K = 5
# Every distribution the shipped code imports (a test loads the model with all others unimportable).
# mlflow-skinny, not mlflow: loading a pyfunc needs none of the server, scipy, scikit-learn, matplotlib
# or pyarrow that the full distribution pulls in.
REQUIREMENTS = ("mlflow-skinny", "torch", "timm", "safetensors", "numpy", "pandas", "pillow")


class ImgclsModel(PythonModel):
    predictor: Predictor | EnsemblePredictor

    def load_context(self, context) -> None:
        if ENSEMBLE_DIR in context.artifacts:  # an ensemble: one artifact folder (models/ensemble.py)
            self.predictor = load_ensemble(context.artifacts[ENSEMBLE_DIR])
            return
        self.predictor = predictor_from_files(
            **{k: context.artifacts[k] for k in ("weights", "stats", "classes", "network")}
        )

    def class_names(self) -> list[str]:
        """The label set this model predicts (promotion refuses to compare models with different sets)."""
        return list(self.predictor.classes)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # a DataFrame hint gives MLflow no schema to infer (the explicit signature stays the only one) and
        # stops its "add type hints" warning
        predictor = self.predictor
        arrays, errors = [], []
        for value in model_input["image"]:
            try:
                img = decode(_source(value), max_pixels=MAX_PIXELS)
                arrays.append(to_array(img, predictor.image_size, predictor.channels))
                errors.append("")
            except (DecodeError, ValueError, OSError) as exc:
                arrays.append(None)
                errors.append(_message(exc))
        good = [i for i, a in enumerate(arrays) if a is not None]
        proba = (
            predictor.predict_proba(np.stack([arrays[i] for i in good]))
            if good
            else np.zeros((0, len(predictor.classes)))
        )
        rows = [error_row(e) for e in errors]
        k = min(TOP_K, len(predictor.classes))
        for i, p in zip(good, proba):
            order = np.argsort(-p)[:k]
            ranked = [[predictor.classes[j], round(float(p[j]), 6)] for j in order]
            rows[i].update(label=ranked[0][0], score=float(p[order[0]]), top_k=json.dumps(ranked))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _message(exc: Exception) -> str:
    # PIL names the BytesIO it read from; that address means nothing to the caller
    text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
    return f"{type(exc).__name__}: {text}"[:300]


def _source(value) -> str | bytes:
    """A path that exists is read from disk; anything else must be base64 of the image file."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ValueError("empty image value: expected a file path or base64 image bytes")
    if len(value) < 4096 and os.path.isfile(value):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not an existing file and not base64 image bytes: {value[:80]!r}") from None


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(
            [
                ColSpec("string", "label"),
                ColSpec("double", "score"),
                ColSpec("string", "top_k"),
                ColSpec("string", "error"),
            ]
        ),
    )


def _input_example(image: np.ndarray) -> pd.DataFrame:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")]})


def _stage(source: Path, relatives, target: Path) -> Path:
    for relative in relatives:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target / relative)
    return target


def _shipped_base(staging: Path) -> Path:
    """A `tasks` package holding only the shared base, staged under `staging` for code_paths."""
    return _stage(TASKS_DIR, ("__init__.py", "common/__init__.py", *SHIPPED_BASE), staging / "tasks")


def _shipped_models(staging: Path) -> Path:
    """A `models` package holding only the inference modules, staged under `staging` for code_paths."""
    return _stage(MODELS_DIR, SHIPPED_MODELS, staging / "models")


def _model_kwargs(files: dict[str, Path], example_image: np.ndarray, staging: Path) -> dict:
    code_paths = [str(_shipped_models(staging)), str(_shipped_base(staging))]
    return dict(
        python_model=str(ENTRY),
        artifacts={k: str(v) for k, v in files.items()},
        code_paths=code_paths,
        signature=_signature(),
        input_example=_input_example(example_image),
        # pinned from this environment; inferring them would load the model in a subprocess
        pip_requirements=[_pinned(name) for name in REQUIREMENTS],
    )


def _pinned(name: str) -> str:
    found = installed_version(name)
    return f"{found[0]}=={found[1]}" if found else name


def save_pyfunc(path: str | Path, files: dict[str, Path], example_image: np.ndarray) -> None:
    """Save the model to an empty or missing directory `path` (files from predictor.save_model_files, or
    {"ensemble": folder} for an ensemble saved by models.ensemble.save_ensemble)."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as staging:
        mlflow.pyfunc.save_model(path=str(path), **_model_kwargs(files, example_image, Path(staging)))


def log_pyfunc(files: dict[str, Path], example_image: np.ndarray):
    """Log the model to the active run as artifact path "model"; returns MLflow's ModelInfo."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory() as staging:
        return mlflow.pyfunc.log_model(name="model", **_model_kwargs(files, example_image, Path(staging)))
