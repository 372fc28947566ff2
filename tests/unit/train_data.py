"""A tiny prepared store (the layout `augment` writes) plus the split manifest train hashes, made from
generated images: three classes told apart by brightness, so a few training steps separate them."""
from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd

from tasks.common.params import Paths

CLASSES = ["dark", "mid", "bright"]
LEVELS = [50, 128, 205]


def make_images(n: int, label_idx: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.normal(LEVELS[label_idx], 20, (n, size, size, 1))
    return np.clip(np.repeat(base, channels, axis=3), 0, 255).astype(np.uint8)


def make_project(root: Path, per_split: dict[str, int] | None = None, size: int = 16, channels: int = 1,
                 classes: list[str] = CLASSES, seed: int = 0) -> Paths:
    """Write data/prepared (images.npy, index.parquet, classes.json, stats.json, augment.json,
    eval.json) and the split manifest under `root`; per_split = images per class and split."""
    per_split = per_split or {"train": 16, "val": 6, "test": 4}
    rng = np.random.default_rng(seed)
    paths = Paths(prepared=str(root / "prepared"), split=str(root / "split.parquet"),
                  train_dir=str(root / "train"), reports=str(root / "reports"))
    images, rows = [], []
    for split, n in per_split.items():
        for label_idx, label in enumerate(classes):
            for image in make_images(n, label_idx, size, channels, rng):
                rows.append({"row": len(images), "image_id": f"{len(images):064x}", "label": label,
                             "label_idx": label_idx, "split": split, "balance_copy": False})
                images.append(image)
    rows.append(dict(rows[0], balance_copy=True))
    prepared = Path(paths.prepared)
    prepared.mkdir(parents=True)
    stack = np.stack(images)
    np.save(prepared / "images.npy", stack)
    index = pd.DataFrame(rows)
    index.to_parquet(prepared / "index.parquet", index=False)
    index[~index["balance_copy"]].to_parquet(paths.split, index=False)
    (prepared / "classes.json").write_text(json.dumps(classes))
    mean, std = [float(stack.mean() / 255)] * channels, [float(stack.std() / 255)] * channels
    (prepared / "stats.json").write_text(json.dumps({"image_size": size, "channels": channels, "mean": mean, "std": std}))
    normalize = A.Normalize(mean=mean, std=std, max_pixel_value=255)
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.Affine(translate_px=(-1, 1), p=0.5), normalize]),
           str(prepared / "augment.json"), data_format="json")
    A.save(A.Compose([normalize]), str(prepared / "eval.json"), data_format="json")
    return paths
