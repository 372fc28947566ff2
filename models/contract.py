"""What a prediction looks like, defined once for the pyfunc model, `imgcls predict` and the server:
one row per input image with these columns. A row that could not be scored has an empty label, a NaN
score, no top_k and the reason in `error`."""

from __future__ import annotations

import pandas as pd

OUTPUT_COLUMNS = ["label", "score", "top_k", "error"]


def error_row(message: str) -> dict:
    return {"label": "", "score": float("nan"), "top_k": "[]", "error": message}


def error_rows(n: int, message: str) -> pd.DataFrame:
    return pd.DataFrame([error_row(message)] * n, columns=OUTPUT_COLUMNS)
