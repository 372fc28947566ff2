"""A tiny pyfunc model that follows the imgcls contract (column `image`: path or base64 bytes ->
label, score, top_k, error), classifying by mean brightness. Real MLflow model, no training."""
from __future__ import annotations

import base64
import binascii
import io
import json
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image


class BrightnessModel(mlflow.pyfunc.PythonModel):
    def __init__(self, strict: bool = False):
        self.strict = strict  # strict: a bad image fails the whole call, like a careless third-party model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for value in model_input["image"]:
            try:
                src = value if os.path.isfile(value) else io.BytesIO(base64.b64decode(value, validate=True))
                with Image.open(src) as img:
                    bright = float(np.asarray(img.convert("L"), dtype=np.float64).mean()) / 255.0
            except (OSError, ValueError, binascii.Error) as exc:
                if self.strict:
                    raise
                rows.append({"label": "", "score": float("nan"), "top_k": "[]", "error": f"{type(exc).__name__}: {exc}"})
                continue
            ranked = sorted([("bright", bright), ("dark", 1.0 - bright)], key=lambda t: -t[1])
            rows.append({"label": ranked[0][0], "score": ranked[0][1], "top_k": json.dumps(ranked), "error": ""})
        return pd.DataFrame(rows, columns=["label", "score", "top_k", "error"])


def save(path, strict: bool = False) -> str:
    mlflow.pyfunc.save_model(path=str(path), python_model=BrightnessModel(strict))
    return str(path)


def png_bytes(value: int, size: int = 16, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(buf, format="PNG")
    return buf.getvalue()
