"""clean's memory between runs: the Inspection of every image it decoded, keyed by image id (the
SHA-256 of the file, so a changed file is a new key), the pixel limit it was judged under and the
source of the code that computed it. A re-run after new images arrive decodes only those; any change
to the inspection code or the limit makes every entry a miss. The cache never changes a result: an
entry holds exactly what inspecting the image again would return.

Beside it, the near-duplicate index (load_near_index / save_near_index): the images clean searched
for near pairs and the verified pairs among them, keyed by the inspection and similarity code and
the rule's settings, so a re-run looks up only the new images (tasks.checks.similarity.pairs_with_new)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.checks.quality import Inspection
from tasks.common.atomic import write_parquet

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
# everything an Inspection is computed by
_CODE = (_HERE / "quality.py", _HERE / "phash.py", _HERE.parent / "common" / "images.py")
# file names under paths.cache: clean writes both, split reads the aligned copies of the first
INSPECTIONS_FILE = "clean_inspections.parquet"
NEAR_INDEX_FILE = "clean_near_index.parquet"
_SCALARS = ("status", "detail", "width", "height", "gray_std", "dominant_fraction", "pixel_hash")


def code_version() -> str:
    digest = hashlib.sha256()
    for source in _CODE:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _arrays(blobs: pd.Series) -> list[np.ndarray]:
    """float32 arrays from their bytes, one join + one copy for all rows (not one per row)."""
    sizes = blobs.map(len).to_numpy() // 4
    flat = np.frombuffer(b"".join(blobs), dtype=np.float32).copy()
    return np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []


def load(path: Path, max_pixels: int) -> dict[str, Inspection]:
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
        frame = frame[(frame["code"] == code_version()) & (frame["max_pixels"] == max_pixels)]
        scalars = {name: frame[name].tolist() for name in _SCALARS}
        hashes = frame["phash"].to_numpy(dtype=np.int64).view(np.uint64).tolist()
        thumbnails, features = _arrays(frame["thumbnail"]), _arrays(frame["features"])
        return {
            image_id: Inspection(
                **{name: values[k] for name, values in scalars.items()},
                phash=int(hashes[k]),
                thumbnail=thumbnails[k],
                features=features[k],
            )
            for k, image_id in enumerate(frame["image_id"])
        }
    except Exception as exc:  # a damaged or foreign cache only costs a re-decode
        log.warning("ignoring the inspection cache %s: %s", path, exc)
        return {}


def load_copies(path: Path, image_ids: list[str]) -> dict[str, np.ndarray]:
    """The aligned near-duplicate copies (Inspection.thumbnail) the cache holds for `image_ids`, for
    split. Any pixel limit's entry will do: the limit only decides whether an image is decoded, never
    what its copy is. Only the asked-for rows are read (a filter pushed into the Parquet reader)."""
    if not path.is_file() or not image_ids:
        return {}
    try:
        frame = pd.read_parquet(
            path, columns=["image_id", "status", "thumbnail", "code"], filters=[("image_id", "in", list(image_ids))]
        )
    except Exception as exc:  # a damaged or foreign cache only costs a re-decode
        log.warning("ignoring the inspection cache %s: %s", path, exc)
        return {}
    frame = frame[(frame["code"] == code_version()) & (frame["status"] == "ok")].drop_duplicates("image_id")
    return dict(zip(frame["image_id"], _arrays(frame["thumbnail"])))


def near_index_key(radius: int, min_similarity: float) -> str:
    """What decides whether two inspected images are a near pair: the inspection code (their hashes and
    copies), the rule's code and its two settings. The pixel limit needs no place here: an image is
    only in the index with an Inspection of its own run's limit."""
    digest = hashlib.sha256(f"{code_version()}:{radius}:{min_similarity!r}".encode())
    digest.update((_HERE / "similarity.py").read_bytes())
    return digest.hexdigest()[:16]


def load_near_index(path: Path, key: str) -> tuple[list[str], pd.DataFrame]:
    """(members, pairs): the images the last run searched for near-duplicates among, and every
    verified near pair between them (columns a < b, image ids); nothing when the key differs."""
    empty = pd.DataFrame({"a": pd.Series(dtype=str), "b": pd.Series(dtype=str)})
    if not path.is_file():
        return [], empty
    try:
        frame = pd.read_parquet(path)
        if frame.empty or set(frame["key"]) != {key}:
            return [], empty
        members = frame.loc[frame["b"].isna(), "a"].tolist()
        return members, frame.loc[frame["b"].notna(), ["a", "b"]].reset_index(drop=True)
    except Exception as exc:  # a damaged or foreign index only costs a fresh search
        log.warning("ignoring the near-duplicate index %s: %s", path, exc)
        return [], empty


def save_near_index(path: Path, key: str, members: list[str], pairs: pd.DataFrame) -> None:
    """One file, so members and pairs can never come from different runs: member rows have b = null."""
    member_rows = pd.DataFrame({"a": list(members), "b": None})
    frame = pd.concat([member_rows, pairs[["a", "b"]]], ignore_index=True).assign(key=key)
    write_parquet(frame, path)


def save(path: Path, inspections: dict[str, Inspection], max_pixels: int) -> None:
    """Replaces the cache with `inspections` (the images of this run, so it never outgrows the data)."""
    items = sorted(inspections.items())
    frame = pd.DataFrame(
        {
            "image_id": [image_id for image_id, _ in items],
            **{name: [getattr(insp, name) for _, insp in items] for name in _SCALARS},
            "phash": np.array([insp.phash for _, insp in items], dtype=np.uint64).view(np.int64),
            "thumbnail": [np.asarray(insp.thumbnail, np.float32).tobytes() for _, insp in items],
            "features": [np.asarray(insp.features, np.float32).tobytes() for _, insp in items],
            "max_pixels": max_pixels,
            "code": code_version(),
        }
    )
    write_parquet(frame, path)
