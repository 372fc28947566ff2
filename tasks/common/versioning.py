"""What a run is made of: the dataset version (one hash that changes exactly when the labelled,
split data changes) and the code's git commit, both tagged on every MLflow run.

Image ids are the SHA-256 of the stored files, so hashing the (image_id, label, split) rows of the
split manifest covers the store's content too, without reading a single image."""

from __future__ import annotations

import hashlib
import subprocess

from tasks.common.manifest import read_manifest
from tasks.common.params import Paths


def dataset_version(paths: Paths) -> str:
    df = read_manifest(paths.split, "split")
    rows = sorted(zip(df["image_id"].astype(str), df["label"].astype(str), df["split"].astype(str)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\t".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()


def git_commit() -> str:
    """HEAD of the repository the stage runs in; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()
