"""A tiny prepared store (the layout `augment` writes: images.npy, index.parquet, classes.json,
stats.json, augment.json, eval.json), optionally with the split manifest train hashes, made from
generated images in one of two kinds of three classes:

- "brightness": dark / mid / bright, told apart by mean brightness, so a few CNN training steps
  separate them (while HOG features, which see gradients, do not);
- "stripes": horizontal / vertical / diagonal stripes, told apart by orientation, so any reasonable
  classifier (HOG + SVM included) separates them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.params import Paths

BRIGHTNESS_CLASSES = ["dark", "mid", "bright"]
LEVELS = [50, 128, 205]
STRIPE_CLASSES = ["horizontal", "vertical", "diagonal"]


def stripes(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One grey picture of stripes: kind 0 horizontal, 1 vertical, 2 diagonal."""
    yy, xx = np.mgrid[0:size, 0:size]
    coord = (yy, xx, yy + xx)[kind]
    period = rng.integers(3, 6)
    image = np.where((coord + rng.integers(0, period)) % period < period / 2, 200.0, 40.0)
    return np.clip(image + rng.normal(0, 15, image.shape), 0, 255).astype(np.uint8)


def _brightness(n: int, label_idx: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(LEVELS[label_idx], 20, (n, size, size)), 0, 255).astype(np.uint8)


def _stripes(n: int, label_idx: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([stripes(label_idx, size, rng) for _ in range(n)])


# kind -> (class names, draw n grey images of a class, label-preserving training augmentations)
KINDS = {
    "brightness": (
        BRIGHTNESS_CLASSES,
        _brightness,
        lambda A: [A.HorizontalFlip(p=0.5), A.Affine(translate_px=(-1, 1), p=0.5)],
    ),
    "stripes": (STRIPE_CLASSES, _stripes, lambda A: [A.RandomBrightnessContrast(p=0.5)]),
}


def make_prepared_store(
    root: Path,
    per_split: dict[str, int] | None = None,
    size: int = 16,
    channels: int = 1,
    seed: int = 0,
    kind: str = "stripes",
    classes: list[str] | None = None,
) -> Path:
    """Write the prepared store at `root` and return it. per_split = images per class in each split
    (default train 12, val 4, test 4); train gets one balance copy (of its first row). `classes`
    renames the kind's three classes."""
    import albumentations as A

    default_classes, draw, augmentations = KINDS[kind]
    classes = list(classes or default_classes)
    per_split = per_split or {"train": 12, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    images, rows = [], []
    for split, n in per_split.items():
        for label_idx, label in enumerate(classes):
            for gray in draw(n, label_idx, size, rng):
                rows.append(
                    {
                        "row": len(images),
                        "image_id": f"{len(images):064x}",
                        "label": label,
                        "label_idx": label_idx,
                        "split": split,
                        "balance_copy": False,
                    }
                )
                images.append(np.repeat(gray[:, :, None], channels, axis=2))
    rows.append(dict(rows[0], balance_copy=True))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stack = np.stack(images)
    np.save(root / "images.npy", stack)
    pd.DataFrame(rows).to_parquet(root / "index.parquet", index=False)
    (root / "classes.json").write_text(json.dumps(classes))
    mean, std = [float(stack.mean() / 255)] * channels, [float(stack.std() / 255)] * channels
    (root / "stats.json").write_text(json.dumps({"image_size": size, "channels": channels, "mean": mean, "std": std}))
    normalize = A.Normalize(mean=mean, std=std, max_pixel_value=255)
    A.save(A.Compose([*augmentations(A), normalize]), str(root / "augment.json"), data_format="json")
    A.save(A.Compose([normalize]), str(root / "eval.json"), data_format="json")
    return root


def make_project(
    root: Path,
    per_split: dict[str, int] | None = None,
    size: int = 16,
    channels: int = 1,
    classes: list[str] | None = None,
    seed: int = 0,
    kind: str = "brightness",
) -> Paths:
    """The prepared store at root/prepared plus the split manifest (root/split.parquet) train hashes;
    returns Paths for them and for root/train, root/reports. Default per_split train 16, val 6, test 4."""
    paths = Paths(
        prepared=str(root / "prepared"),
        split=str(root / "split.parquet"),
        train_dir=str(root / "train"),
        reports=str(root / "reports"),
    )
    make_prepared_store(
        Path(paths.prepared), per_split or {"train": 16, "val": 6, "test": 4}, size, channels, seed, kind, classes
    )
    index = pd.read_parquet(Path(paths.prepared) / "index.parquet")
    index[~index["balance_copy"]].to_parquet(paths.split, index=False)
    return paths
