"""Prediction core shared by `imgcls predict` and `imgcls serve`: images in, one row each out
(label, score, top_k, error), through the MLflow pyfunc model, which owns decoding, preprocessing
and the class names. A bad image costs its own row, never the batch."""

from __future__ import annotations

import base64
import glob
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from models.contract import OUTPUT_COLUMNS, error_rows
from tasks.common.atomic import write_csv
from tasks.common.errors import UserError
from tasks.common.images import is_image_name

CSV_COLUMNS = ["path", *OUTPUT_COLUMNS]


def load_model(model_uri: str) -> Any:
    import mlflow.pyfunc

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # registry, filesystem and flavor errors all mean "no usable model here"
        raise UserError(f"cannot load model {model_uri}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}"[:300] if text else type(exc).__name__


def expand_inputs(specs: Iterable[str]) -> list[str]:
    """Files as given, folders walked recursively for image files, glob patterns expanded.
    A name that matches nothing is kept, so its row reports it instead of it silently vanishing."""
    found: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(
                str(f)
                for f in path.rglob("*")
                if f.is_file() and is_image_name(f) and not any(p.startswith(".") for p in f.relative_to(path).parts)
            )
        elif glob.has_magic(spec) and not path.exists():
            matches = sorted(m for m in glob.glob(spec, recursive=True) if Path(m).is_file())
            found += matches or [spec]
        else:
            found.append(spec)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError("no images found in the given paths")
    return unique


def _as_model_input(image: str | bytes) -> str:
    # the pyfunc contract: a file path, or base64 of the file's bytes
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode("ascii")
    return str(Path(image).resolve())


def _conform(out: Any, n: int) -> pd.DataFrame:
    out = pd.DataFrame(out).reset_index(drop=True)
    if len(out) != n or not {"label", "score", "top_k"} <= set(out.columns):
        raise ValueError(
            f"model returned {len(out)} rows with columns {list(out.columns)}, expected {n} rows of {OUTPUT_COLUMNS}"
        )
    if "error" not in out.columns:
        out["error"] = ""
    out["error"] = out["error"].fillna("").astype(str)
    out["label"] = out["label"].fillna("").astype(str)
    out["score"] = out["score"].astype(float)
    out["top_k"] = out["top_k"].fillna("[]").astype(str)
    return out[OUTPUT_COLUMNS]


def _predict_batch(model: Any, batch: Sequence[str | bytes]) -> pd.DataFrame:
    try:
        return _conform(model.predict(pd.DataFrame({"image": [_as_model_input(x) for x in batch]})), len(batch))
    except Exception as exc:
        if len(batch) == 1:
            return error_rows(1, one_line(exc))
        # the model refused the whole batch: score one at a time so only the bad image carries the error
        return pd.concat([_predict_batch(model, [x]) for x in batch], ignore_index=True)


def predict_images(
    model: Any, images: Sequence[str | bytes], batch_size: int = 64, progress: bool = True
) -> pd.DataFrame:
    """One output row per input, in input order. Missing files are reported without calling the model."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    parts = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=None if progress else True):
        batch = list(images[start : start + batch_size])
        rows = error_rows(len(batch), "file not found").to_dict("records")
        present = [i for i, x in enumerate(batch) if not isinstance(x, str) or Path(x).is_file()]
        if present:
            for i, row in zip(present, _predict_batch(model, [batch[i] for i in present]).to_dict("records")):
                rows[i] = row
        parts.append(pd.DataFrame(rows, columns=OUTPUT_COLUMNS))
    return pd.concat(parts, ignore_index=True) if parts else error_rows(0, "")


def predict_paths(model: Any, paths: Sequence[str], batch_size: int = 64) -> pd.DataFrame:
    out = predict_images(model, list(paths), batch_size)
    out.insert(0, "path", list(paths))
    return out


def predict_bytes(model: Any, data: bytes) -> dict:
    row = predict_images(model, [data], batch_size=1, progress=False).iloc[0]
    return {
        "label": row["label"],
        "score": None if pd.isna(row["score"]) else float(row["score"]),
        "top_k": json.loads(row["top_k"] or "[]"),
        "error": row["error"],
    }


def write_predictions(df: pd.DataFrame, out: str | Path) -> Path:
    return write_csv(df[CSV_COLUMNS], out)
