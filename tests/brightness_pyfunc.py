"""A real pyfunc model for registry tests, logged as MLflow "models from code" (this file is copied
into the model, so nothing is unpickled). It follows the imgcls pyfunc contract: a DataFrame column
`image` of file paths or base64 bytes in, `label`/`score`/`top_k` out.

It classifies an image by mean brightness (nearest class centre) and deliberately errs on the images
whose difficulty (pixel [0, 0], see tests.registry_models.write_images) is below the class's error
rate in the model config, so tests can build exactly as good or as bad a model as they need."""
import base64
import io
import json
import os

import mlflow
import numpy as np
import pandas as pd
from PIL import Image


class BrightnessModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config
        self.classes = list(config["classes"])          # [[name, centre], ...]
        self.error_rates = dict(config["error_rates"])  # class -> fraction of its images misclassified

    def predict(self, context, model_input, params=None):
        rows = [self._one(value) for value in model_input["image"]]
        return pd.DataFrame(rows, columns=["label", "score", "top_k"])

    def _one(self, value):
        data = open(value, "rb").read() if os.path.isfile(value) else base64.b64decode(value)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
        centres = np.array([c for _, c in self.classes], dtype=float)
        index = int(np.argmin(np.abs(centres - pixels.mean())))
        difficulty = pixels[0, 0] / 256.0
        wrong = difficulty < self.error_rates.get(self.classes[index][0], 0.0)
        if wrong:
            index = (index + 1) % len(self.classes)
        label = self.classes[index][0]
        score = 0.55 if wrong else 0.95
        runner_up = self.classes[(index + 1) % len(self.classes)][0]
        return {"label": label, "score": score, "top_k": json.dumps([[label, score], [runner_up, 1 - score]])}


mlflow.models.set_model(BrightnessModel())
