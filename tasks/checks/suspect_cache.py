"""A cache of validate's suspect-label scores, so a scheduled run on unchanged data does not train the
out-of-fold models again (on 70k Fashion-MNIST images that is 340 s; the result is the same every time).

The key covers everything the scores depend on: the scored images and their labels in order, the
suspect_label settings, the source of the modules that compute them (a code change is a miss) and the
versions of the libraries that do the arithmetic (an upgrade is a miss).
Only the latest entry is kept. It lives under paths.cache, beside ingest's hash cache: not versioned,
safe to delete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tasks.common.atomic import atomic_path
from tasks.common.packages import installed_version

FOLDER = "validate_suspects"
# the modules that compute the scores, read as text (importing oof_cnn would import torch)
SOURCES = ("confident_learning.py", "oof_cnn.py", "hog.py")
LIBRARIES = ("torch", "scikit-learn", "numpy")


def cache_key(image_ids, labels, settings_json: str) -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    sources = [(here / name).read_text(encoding="utf-8") for name in SOURCES]
    versions = repr([installed_version(name) for name in LIBRARIES])
    for part in ("\n".join(map(str, image_ids)), "\n".join(map(str, labels)), settings_json, versions, *sources):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def load(cache_dir: str | Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(probabilities, issue mask) stored under `key`, or None."""
    path = Path(cache_dir) / FOLDER / f"{key}.npz"
    try:
        with np.load(path) as stored:
            return stored["probs"], stored["issues"]
    except (OSError, KeyError, ValueError):  # missing, or unreadable: compute again
        return None


def save(cache_dir: str | Path, key: str, probs: np.ndarray, issues: np.ndarray) -> None:
    folder = Path(cache_dir) / FOLDER
    with atomic_path(folder / f"{key}.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, probs=probs, issues=issues)
    for old in folder.glob("*.npz"):
        if old.stem != key:
            old.unlink(missing_ok=True)
