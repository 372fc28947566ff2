"""The prepared store written by `augment` and read by train, evaluate and the baseline: the one place
that knows its file names, how its metadata is written and how it is read back. images.npy stays
memory-mapped, so a reader holds one batch at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.atomic import write_json
from tasks.common.errors import UserError

IMAGES = "images.npy"  # uint8 [N, H, W, C]
INDEX = "index.parquet"  # one row per stored image (+ balance copies): row, image_id, label, label_idx, split
CLASSES = "classes.json"  # class names; index = label_idx
STATS = "stats.json"  # image_size, channels, mean, std, test_time_flip
TRAIN_SPEC = "augment.json"  # albumentations train pipeline
EVAL_SPEC = "eval.json"  # albumentations eval pipeline (Normalize only)
FILES = (IMAGES, INDEX, CLASSES, STATS, TRAIN_SPEC, EVAL_SPEC)
# What decides a training run's inputs besides the pixels (the index names every image by content hash)
FINGERPRINTED = (INDEX, CLASSES, STATS, TRAIN_SPEC, EVAL_SPEC)


@dataclass(frozen=True)
class PreparedStore:
    images: np.ndarray  # uint8 [N, H, W, C], memory-mapped
    index: pd.DataFrame  # one row per image (balance copies dropped): row, image_id, label, label_idx, split
    classes: list[str]  # index = label_idx

    def split(self, name: str) -> pd.DataFrame:
        return self.index[self.index["split"] == name].reset_index(drop=True)


def require(path: str | Path, names: tuple[str, ...] = FILES) -> Path:
    path = Path(path)
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}: run the `augment` stage first")
    return path


def write_metadata(folder: Path, index: pd.DataFrame, classes: list[str], stats: dict) -> None:
    """index, classes and stats into `folder` (augment's temporary directory, renamed into place whole)."""
    index.to_parquet(folder / INDEX, index=False)
    write_json(list(classes), folder / CLASSES)
    write_json(stats, folder / STATS)


def read_json(path: str | Path, name: str):
    return json.loads((Path(path) / name).read_text(encoding="utf-8"))


def read_index(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(path) / INDEX)


def open_images(path: str | Path) -> np.ndarray:
    return np.load(Path(path) / IMAGES, mmap_mode="r")


def read_prepared(path: str | Path) -> PreparedStore:
    """Open the prepared store without the train-time balance copies (each image counts once)."""
    path = require(path, (IMAGES, INDEX, CLASSES))
    index = read_index(path)
    index = index[~index["balance_copy"].astype(bool)].reset_index(drop=True)
    return PreparedStore(open_images(path), index, list(read_json(path, CLASSES)))
