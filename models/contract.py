"""What a prediction looks like, defined once for the pyfunc model, `imgcls predict` and the server:
one row per input image with these columns. A row that could not be scored has an empty label, a NaN
score, no top_k and the reason in `error`. Also what a model's stats say about its input (StatsInput)."""

from __future__ import annotations

import pandas as pd

OUTPUT_COLUMNS = ["label", "score", "top_k", "error"]


def error_row(message: str) -> dict:
    return {"label": "", "score": float("nan"), "top_k": "[]", "error": message}


def error_rows(n: int, message: str) -> pd.DataFrame:
    return pd.DataFrame([error_row(message)] * n, columns=OUTPUT_COLUMNS)


class StatsInput:
    """What a model's `stats` dict says about its input and its calibration (shared by Predictor and
    models.hog.HogLinearPredictor, which the ensemble feeds alike)."""

    stats: dict

    @property
    def image_size(self) -> int:
        return int(self.stats["image_size"])

    @property
    def channels(self) -> int:
        return int(self.stats["channels"])

    @property
    def temperature(self) -> float:
        return float(self.stats.get("temperature", 1.0))
