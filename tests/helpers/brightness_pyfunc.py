"""The one stub pyfunc model the tests use: a real MLflow model that classifies an image by its mean
brightness (nearest class centre), no training. It is logged as MLflow "models from code": this file
is copied into the model and run on load, so nothing is unpickled and the model loads in any process
(a CLI subprocess, a server) whether or not `tests` is importable there. Save or log it through
tests.helpers.brightness_models, which points MLflow at this file's path.

It follows the imgcls prediction contract (models/contract.py): a DataFrame column `image` of file
paths or base64 bytes in, `label` / `score` / `top_k` (JSON [[label, score], ...]) / `error` out, a
row per image. A class's score is 1 - |mean brightness - its centre| / 255.

Model config (all optional):
- classes: [[name, centre], ...], default [["dark", 0], ["bright", 255]] (so a bright image's score
  is its mean brightness / 255);
- error_rates: {class: r} -- deliberately errs (answers the next class) on the images of that class
  whose difficulty, pixel [0, 0] / 256, is below r (see brightness_models.write_images), so a test
  can build exactly as good or as bad a model as it needs;
- strict: a bad image fails the whole call, like a careless third-party model; otherwise it gets an
  error row and the rest of the batch is scored."""

import base64
import binascii
import io
import json
import os

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

COLUMNS = ["label", "score", "top_k", "error"]
DEFAULT_CLASSES = [["dark", 0], ["bright", 255]]


class BrightnessModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        self.classes = [(str(name), float(centre)) for name, centre in config.get("classes", DEFAULT_CLASSES)]
        self.error_rates = dict(config.get("error_rates", {}))
        self.strict = bool(config.get("strict", False))

    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for value in model_input["image"]:
            try:
                rows.append(self._one(value))
            except (OSError, ValueError, binascii.Error) as exc:
                if self.strict:
                    raise
                rows.append(
                    {"label": "", "score": float("nan"), "top_k": "[]", "error": f"{type(exc).__name__}: {exc}"}
                )
        return pd.DataFrame(rows, columns=COLUMNS)

    def _one(self, value):
        src = value if os.path.isfile(value) else io.BytesIO(base64.b64decode(value, validate=True))
        with Image.open(src) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float64)
        scores = [1.0 - abs(pixels.mean() - centre) / 255.0 for _, centre in self.classes]
        index = int(np.argmax(scores))
        if pixels[0, 0] / 256.0 < self.error_rates.get(self.classes[index][0], 0.0):
            index = (index + 1) % len(self.classes)  # a deliberate mistake
        ranked = [index] + sorted((i for i in range(len(self.classes)) if i != index), key=lambda i: -scores[i])
        top_k = [[self.classes[i][0], scores[i]] for i in ranked]
        return {"label": top_k[0][0], "score": top_k[0][1], "top_k": json.dumps(top_k), "error": ""}


mlflow.models.set_model(BrightnessModel())
