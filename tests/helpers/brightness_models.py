"""Saving and logging the stub pyfunc (tests/helpers/brightness_pyfunc.py) as real MLflow models, and
the images it is scored on: tiny generated PNGs in a content-addressed store and a split manifest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers.images import store_image

# "models from code": MLflow copies the file at this path into every model saved or logged here
MODEL_CODE = Path(__file__).with_name("brightness_pyfunc.py")
CLASSES = [["dark", 40], ["mid", 128], ["bright", 215]]  # [name, centre brightness] for registry runs


def save(path, strict: bool = False) -> str:
    """A two-class model (dark / bright) saved at `path`; `strict` fails a whole call on one bad image."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(MODEL_CODE), pip_requirements=["mlflow"], model_config={"strict": strict}
    )
    return str(path)


def write_images(store: Path, label: str, centre: int, n: int, seed: int) -> list[str]:
    """n 8x8 PNGs of one class in the store. Pixel [0, 0] is the image's difficulty k/n (k = 0..n-1),
    so a model with error rate r on this class misses exactly ceil(r * n) of them."""
    rng = np.random.default_rng(seed)
    ids = []
    for k in range(n):
        pixels = np.clip(centre + rng.integers(-12, 13, size=(8, 8)), 0, 255).astype(np.uint8)
        pixels[0, 0] = math.ceil(k * 256 / n)  # in [k/n, (k+1)/n) once divided by 256
        ids.append(store_image(store, pixels))
    return ids


def write_split(paths, per_class: dict[str, int], seed: int = 0, train_per_class: int = 2) -> pd.DataFrame:
    """A split manifest whose test split has per_class[c] images of class c (plus a few train rows,
    which promotion must ignore)."""
    centres = dict((name, c) for name, c in CLASSES)
    rows = []
    for i, (label, n) in enumerate(per_class.items()):
        for image_id in write_images(Path(paths.store), label, centres[label], n, seed * 100 + i):
            rows.append({"image_id": image_id, "label": label, "split": "test"})
        for image_id in write_images(Path(paths.store), label, centres[label], train_per_class, seed * 100 + 50 + i):
            rows.append({"image_id": image_id, "label": label, "split": "train"})
    df = pd.DataFrame(rows)
    Path(paths.split).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(paths.split, index=False)
    return df


def train_run(
    train_dir: Path,
    error_rates: dict[str, float],
    logged_metrics: dict[str, float] | None = None,
    dataset_version: str = "ds-1",
    classes: list | None = None,
) -> dict:
    """A real MLflow run in the current tracking store logging the stub (three classes, these error
    rates) as "model", and the run.json that train writes."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.set_tags({"git_commit": "abc1234", "dataset_version": dataset_version, "stage": "train"})
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            pip_requirements=["mlflow"],
            model_config={"classes": classes or CLASSES, "error_rates": error_rates},
        )
        mlflow.log_metrics(logged_metrics or {})
    info = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "model_uri": f"runs:/{run.info.run_id}/model",
        "dataset_version": dataset_version,
        "baseline_run_id": None,
    }
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return info
