"""A tiny prepared store (the layout `augment` writes) made from generated stripe images: three classes
told apart by stripe orientation, so any reasonable classifier separates them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["horizontal", "vertical", "diagonal"]


def stripes(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    coord = (yy, xx, yy + xx)[kind]
    period = rng.integers(3, 6)
    image = np.where((coord + rng.integers(0, period)) % period < period / 2, 200.0, 40.0)
    return np.clip(image + rng.normal(0, 15, image.shape), 0, 255).astype(np.uint8)


def make_prepared_store(root: Path, per_class: dict[str, int] | None = None, size: int = 16,
                        channels: int = 1, seed: int = 0, transforms: bool = False) -> Path:
    """Write images.npy / index.parquet / classes.json / stats.json under root; per_class gives the
    number of images per split and class (default train 12, val 4, test 4). Train gets one balance copy.
    `transforms` also writes augment.json and eval.json (what training needs)."""
    per_class = per_class or {"train": 12, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    images, rows = [], []
    for split, n in per_class.items():
        for label_idx, label in enumerate(CLASSES):
            for _ in range(n):
                gray = stripes(label_idx, size, rng)
                images.append(np.repeat(gray[:, :, None], channels, axis=2))
                row = len(rows)
                rows.append({"row": row, "image_id": f"{row:064x}", "label": label, "label_idx": label_idx,
                             "split": split, "balance_copy": False})
    rows.append(dict(rows[0], balance_copy=True))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", np.stack(images))
    pd.DataFrame(rows).to_parquet(root / "index.parquet", index=False)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    stack = np.stack(images) / 255.0
    (root / "stats.json").write_text(json.dumps({"image_size": size, "channels": channels,
                                                 "mean": [float(stack.mean())] * channels,
                                                 "std": [float(stack.std())] * channels}))
    if transforms:
        _write_transforms(root, [float(stack.mean())] * channels, [float(stack.std())] * channels)
    return root


def _write_transforms(root: Path, mean: list[float], std: list[float]) -> None:
    import albumentations as A

    normalize = A.Normalize(mean=mean, std=std, max_pixel_value=255)
    A.save(A.Compose([A.RandomBrightnessContrast(p=0.5), normalize]), str(root / "augment.json"), data_format="json")
    A.save(A.Compose([normalize]), str(root / "eval.json"), data_format="json")
