"""Score a registered model on the current test split through its pyfunc: the same images, the same
code path for the candidate and for the champion, so neither is judged by numbers from another day."""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.common.errors import UserError
from tasks.common.manifest import read_manifest
from tasks.common.store import ImageStore, open_location, scheme
from tasks.judging.gates import Scores, score_predictions

log = logging.getLogger(__name__)
LATENCY_WARMUP = 2
LATENCY_SAMPLES = 20


@dataclass(frozen=True)
class HeldOut:
    image_paths: list[str]
    labels: list[str]


def load_test_set(split_manifest: str | Path, store: str | Path) -> HeldOut:
    df = read_manifest(split_manifest, produced_by="split")
    if "split" not in df.columns:
        raise UserError(f"{split_manifest} has no `split` column: run the `split` stage first")
    test = df[df["split"] == "test"].sort_values("image_id", kind="stable")
    if test.empty:
        raise UserError(f"{split_manifest} has no test rows: promotion needs a test split to score models on")
    images = ImageStore(store)
    paths = [images.location_of(i) for i in test["image_id"]]  # local paths, or URLs of a remote store
    missing = (
        [images.location_of(i) for i in images.missing(test["image_id"])]
        if images.remote
        else [p for p in paths if not Path(p).is_file()]
    )
    if missing:
        raise UserError(f"{len(missing)} test images missing from the store, e.g. {missing[0]}: run `ingest` again")
    log.info("scoring on %d test images from %s", len(paths), split_manifest)
    return HeldOut(paths, test["label"].astype(str).tolist())


def score_model(model_uri: str, test: HeldOut, batch_size: int, measure_latency: bool) -> Scores:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    predicted, confidence = [], []
    starts = range(0, len(test.image_paths), batch_size)
    for start in tqdm(starts, desc=f"scoring {model_uri}", unit="batch", disable=None):
        out = model.predict(pd.DataFrame({"image": model_inputs(test.image_paths[start : start + batch_size])}))
        predicted += out["label"].astype(str).tolist()
        confidence += out["score"].astype(float).tolist()
    latency = single_image_p50_ms(model, test.image_paths) if measure_latency else None
    scores = score_predictions(test.labels, predicted, confidence, latency)
    return dataclasses.replace(scores, classes=class_names(model))


def class_names(model) -> tuple[str, ...] | None:
    """The label set a loaded pyfunc declares through its python model's class_names(); None when the
    model does not say (a foreign pyfunc), in which case promotion cannot check the label set."""
    try:
        names = model.unwrap_python_model().class_names()
    except Exception:  # not a python-model flavour, or no class_names(): nothing declared
        return None
    return tuple(str(n) for n in names)


def model_inputs(locations: list[str]) -> list[str]:
    """The pyfunc's `image` column: a local file's path as it is; an image of a remote store (a URL)
    as base64 of its bytes, which the pyfunc takes as well (models/pyfunc.py)."""
    out = []
    for location in locations:
        if scheme(location) is None:
            out.append(location)
        else:
            out.append(base64.b64encode(open_location(location).data).decode("ascii"))
    return out


def single_image_p50_ms(model, image_paths: list[str]) -> float:
    """Median wall time of one-image predict calls, after a warm-up (first calls pay lazy init)."""
    sample = model_inputs(image_paths[:LATENCY_SAMPLES])  # fetched first: the model's time, not the store's
    for path in sample[:LATENCY_WARMUP]:
        model.predict(pd.DataFrame({"image": [path]}))
    times = []
    for path in sample:
        t0 = time.perf_counter()
        model.predict(pd.DataFrame({"image": [path]}))
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))
