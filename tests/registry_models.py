"""Test helpers for the registry: tiny generated images in a content-addressed store, a split
manifest, and real training runs that log a real pyfunc (tests/brightness_pyfunc.py)."""
from __future__ import annotations

import hashlib
import io
import math
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.common.manifest import store_path

MODEL_CODE = Path(__file__).with_name("brightness_pyfunc.py")
CLASSES = [["dark", 40], ["mid", 128], ["bright", 215]]


def write_images(store: Path, label: str, centre: int, n: int, seed: int) -> list[str]:
    """n 8x8 PNGs of one class in the store. Pixel [0, 0] is the image's difficulty k/n (k = 0..n-1),
    so a model with error rate r on this class misses exactly ceil(r * n) of them."""
    rng = np.random.default_rng(seed)
    ids = []
    for k in range(n):
        pixels = np.clip(centre + rng.integers(-12, 13, size=(8, 8)), 0, 255).astype(np.uint8)
        pixels[0, 0] = math.ceil(k * 256 / n)  # in [k/n, (k+1)/n) once divided by 256
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        data = buf.getvalue()
        image_id = hashlib.sha256(data).hexdigest()
        target = store_path(store, image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        ids.append(image_id)
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


def train_run(train_dir: Path, error_rates: dict[str, float], logged_metrics: dict[str, float] | None = None,
              dataset_version: str = "ds-1") -> dict:
    """A real MLflow run in the current tracking store logging the brightness pyfunc as "model",
    and the run.json that train writes."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.set_tags({"git_commit": "abc1234", "dataset_version": dataset_version, "stage": "train"})
        mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE), pip_requirements=["mlflow"],
            model_config={"classes": CLASSES, "error_rates": error_rates},
        )
        mlflow.log_metrics(logged_metrics or {})
    info = {
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": mlflow.get_tracking_uri(),
        "model_uri": f"runs:/{run.info.run_id}/model", "dataset_version": dataset_version, "baseline_run_id": None,
    }
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return info
