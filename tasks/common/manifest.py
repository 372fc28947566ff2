"""Manifest schema shared by the data stages. A manifest is a pandas DataFrame stored as Parquet;
every image is named by the SHA-256 of its file (`image_id`) and lives in the content-addressed store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.common.errors import UserError

# ingest's output; later stages keep these columns and add their own.
INGESTED_COLUMNS = [
    "image_id",  # sha256 hex of the file bytes
    "source_path",  # as the user gave it (relative to the source folder / manifest, or absolute)
    "label",  # class name, str
    "bytes",  # file size
    "format",  # PIL format name (PNG, JPEG, ...) or "" if the header is unreadable
    "width",  # from the header; 0 if unreadable
    "height",
    "mode",  # PIL mode from the header (L, RGB, P, CMYK, I;16, ...)
    "ingested_at",  # UTC ISO timestamp of first ingestion
    "origin",  # "source", "inbox" or "feedback" (admitted from the server's quarantine; clean
    # sets a feedback copy aside when it contradicts the data, never the data itself)
    "given_split",  # split named by the source manifest ("" when none)
]
# columns added by clean
# alpha_background: "" or the "#rrggbb" that decode() composites the image's transparency onto
# (tasks.common.images.background_colour: a per-image rule, so prediction decodes the same way)
CLEAN_COLUMNS = ["pixel_hash", "phash", "alpha_background"]
# added by validate: suspected mislabels stay in the manifest but are kept out of training
VALIDATE_COLUMNS = ["suspect_label", "given_probability"]
SPLITS = ("train", "val", "test")


def store_path(store: str | Path, image_id: str) -> Path:
    """Store layout: <store>/<first two hex chars>/<sha256>; the format is read from the bytes.
    A local store only: a store that may be a URL (s3://...) is read through tasks.common.store."""
    from tasks.common.store import scheme

    if scheme(store) is not None:
        raise UserError(f"{store}: a URL store has no local path (read it through tasks.common.store.ImageStore)")
    return Path(store) / image_id[:2] / image_id


def read_manifest(path: str | Path, produced_by: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the `{produced_by}` stage first")
    return pd.read_parquet(path)
