"""clean's memory between runs: the Inspection of every image it decoded, keyed by image id (the
SHA-256 of the file, so a changed file is a new key), the pixel limit it was judged under and the
source of the code that computed it. A re-run after new images arrive decodes only those; any change
to the inspection code or the limit makes every entry a miss. The cache never changes a result: an
entry holds exactly what inspecting the image again would return."""

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
_SCALARS = ("status", "detail", "width", "height", "gray_std", "dominant_fraction", "pixel_hash")


def code_version() -> str:
    digest = hashlib.sha256()
    for source in _CODE:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def load(path: Path, max_pixels: int) -> dict[str, Inspection]:
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
        frame = frame[(frame["code"] == code_version()) & (frame["max_pixels"] == max_pixels)]
        return {
            row.image_id: Inspection(
                **{name: getattr(row, name) for name in _SCALARS},
                phash=int(np.array(row.phash, dtype=np.int64).view(np.uint64)),
                thumbnail=np.frombuffer(row.thumbnail, dtype=np.float32).copy(),
                features=np.frombuffer(row.features, dtype=np.float32).copy(),
            )
            for row in frame.itertuples(index=False)
        }
    except Exception as exc:  # a damaged or foreign cache only costs a re-decode
        log.warning("ignoring the inspection cache %s: %s", path, exc)
        return {}


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
