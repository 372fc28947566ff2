"""The dataset version: one hash that changes exactly when the labelled, split data changes.

Image ids are the SHA-256 of the stored files, so hashing the (image_id, label, split) rows of the
split manifest covers the store's content too, without reading a single image."""
from __future__ import annotations

import hashlib

from tasks.manifest import read_manifest
from tasks.params import Paths


def dataset_version(paths: Paths) -> str:
    df = read_manifest(paths.split, "split")
    rows = sorted(zip(df["image_id"].astype(str), df["label"].astype(str), df["split"].astype(str)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\t".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()
