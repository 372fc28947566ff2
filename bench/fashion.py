"""Real Fashion-MNIST from Debian's `dataset-fashion-mnist` (idx files), for benchmarks only.

`python -m bench.fashion --out bench/data/fashion [--per-class N]` writes PNGs and a manifest.csv
(path, label, split) keeping the official 10k test set as the test split."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# IMGCLS_FASHION_MNIST_DIR: the same idx .gz files elsewhere (e.g. copied to a machine without apt)
IDX_DIR = Path(os.environ.get("IMGCLS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def ensure_installed() -> Path:
    """Install the Debian package when missing (root, registry reachable)."""
    if not (IDX_DIR / "train-images-idx3-ubyte.gz").is_file():
        apt = shutil.which("apt-get")
        if apt is None:
            raise SystemExit("apt-get not found: install Debian's dataset-fashion-mnist by hand")
        subprocess.run([apt, "update", "-qq"], check=True)
        subprocess.run([apt, "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)
    return IDX_DIR


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N,28,28] uint8, labels [N]) for split 'train' or 'test'."""
    root = ensure_installed()
    prefix = "train" if split == "train" else "t10k"
    return read_idx(root / f"{prefix}-images-idx3-ubyte.gz"), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def subset(labels: np.ndarray, per_class: int | None, seed: int = 0) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def write_folder(out: Path, per_class: int | None = None, test_per_class: int | None = None) -> Path:
    """PNG files under out/images/<split>/<class>/ and out/manifest.csv; returns the manifest path."""
    rows = []
    for split, n in (("train", per_class), ("test", test_per_class)):
        images, labels = load(split)
        for i in subset(labels, n):
            rel = Path("images") / split / CLASSES[labels[i]] / f"{i:05d}.png"
            target = out / rel
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(target)
            rows.append(
                {"path": rel.as_posix(), "label": CLASSES[labels[i]], "split": "test" if split == "test" else ""}
            )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/data/fashion"))
    parser.add_argument("--per-class", type=int, default=None, help="train images per class (default: all 6000)")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all 1000)")
    args = parser.parse_args()
    print(write_folder(args.out, args.per_class, args.test_per_class))
