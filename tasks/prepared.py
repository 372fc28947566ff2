"""Read access to the prepared store written by `augment` (images.npy, index.parquet, classes.json) for
stages that score images: the images stay memory-mapped, only one batch at a time is read."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.errors import UserError


@dataclass(frozen=True)
class PreparedStore:
    images: np.ndarray      # uint8 [N, H, W, C], memory-mapped
    index: pd.DataFrame     # one row per image (balance copies dropped): row, image_id, label, label_idx, split
    classes: list[str]      # index = label_idx

    def split(self, name: str) -> pd.DataFrame:
        return self.index[self.index["split"] == name].reset_index(drop=True)


def read_prepared(path: str | Path) -> PreparedStore:
    """Open the prepared store without the train-time balance copies (each image counts once)."""
    path = Path(path)
    missing = [n for n in ("images.npy", "index.parquet", "classes.json") if not (path / n).is_file()]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}: run the `augment` stage first")
    index = pd.read_parquet(path / "index.parquet")
    index = index[~index["balance_copy"].astype(bool)].reset_index(drop=True)
    classes = json.loads((path / "classes.json").read_text(encoding="utf-8"))
    return PreparedStore(np.load(path / "images.npy", mmap_mode="r"), index, list(classes))
