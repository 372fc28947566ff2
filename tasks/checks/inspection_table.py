"""Many images' Inspections (tasks.checks.quality) held as columns, not as one object each.

As objects an image costs about 5 KB in clean's driver (a float32 aligned copy in its own array, a
dataclass, its strings), 2.5 GB at 500k images before anything is done with them. As columns it
costs about 2.5 KB: the aligned copies sit in one float16 matrix (tasks.checks.phash.aligned_copy
returns float16-exact values, so nothing is lost), the features in one float32 matrix and the
scalars in arrays. Bulk work (hashes, features, copies of many images) takes rows by position."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from tasks.checks.quality import COPY_SIZE, FEATURE_SIZE, Inspection

COPY_DTYPE = np.float16  # exact for every aligned copy (tasks.checks.phash.aligned_copy)


class InspectionTable:
    """A fixed number of rows (`capacity`), filled by add / add_rows / extend, looked up by image id."""

    def __init__(self, capacity: int):
        self.ids: list[str] = []
        self.position: dict[str, int] = {}
        self.status = np.empty(capacity, dtype=object)
        self.detail = np.empty(capacity, dtype=object)
        self.width = np.zeros(capacity, dtype=np.int64)
        self.height = np.zeros(capacity, dtype=np.int64)
        self.pixel_std = np.zeros(capacity, dtype=np.float64)
        self.dominant_fraction = np.zeros(capacity, dtype=np.float64)
        self.chroma_r = np.zeros(capacity, dtype=np.float64)
        self.chroma_g = np.zeros(capacity, dtype=np.float64)
        self.chroma_b = np.zeros(capacity, dtype=np.float64)
        self.pixel_hash = np.empty(capacity, dtype=object)
        self.phash = np.zeros(capacity, dtype=np.uint64)
        # all zeros for an image that did not decode (its Inspection has empty arrays)
        self.copies = np.zeros((capacity, COPY_SIZE), dtype=COPY_DTYPE)
        self.features = np.zeros((capacity, FEATURE_SIZE), dtype=np.float32)

    SCALARS = (
        "status",
        "detail",
        "width",
        "height",
        "pixel_std",
        "dominant_fraction",
        "chroma_r",
        "chroma_g",
        "chroma_b",
        "pixel_hash",
        "phash",
    )
    COLUMNS = (*SCALARS, "copies", "features")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.position

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def chroma(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), 3] colour offsets (tasks.checks.quality.colour_offsets) of those rows."""
        return np.stack([self.chroma_r[rows], self.chroma_g[rows], self.chroma_b[rows]], axis=1)

    def _next_row(self, image_id: str) -> int:
        if image_id in self.position:
            raise ValueError(f"image {image_id} is in the table twice")
        row = len(self.ids)
        if row >= len(self.status):
            raise ValueError(f"the table holds {len(self.status)} images, no more")
        self.ids.append(image_id)
        self.position[image_id] = row
        return row

    def add(self, image_id: str, insp: Inspection) -> None:
        row = self._next_row(image_id)
        for name in self.SCALARS:
            getattr(self, name)[row] = getattr(insp, name)
        if insp.status == "ok":
            self.copies[row] = insp.thumbnail
            self.features[row] = insp.features

    def extend(self, image_ids: list[str], values: dict[str, np.ndarray]) -> None:
        """Append a row per image id: `values[name]` holds column `name` of those rows (every COLUMNS)."""
        start = len(self.ids)
        for image_id in image_ids:
            self._next_row(image_id)
        for name in self.COLUMNS:
            getattr(self, name)[start : len(self.ids)] = values[name]

    def add_rows(self, other: InspectionTable, image_ids: Iterable[str]) -> None:
        """Copy `image_ids`' rows of `other` into this table."""
        image_ids = list(image_ids)
        source = other.rows(image_ids)
        self.extend(image_ids, {name: getattr(other, name)[source] for name in self.COLUMNS})

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Row positions of `image_ids` (KeyError for one not in the table)."""
        return np.fromiter((self.position[image_id] for image_id in image_ids), dtype=np.int64)

    def __getitem__(self, image_id: str) -> Inspection:
        row = self.position[image_id]
        ok = self.status[row] == "ok"
        return Inspection(
            status=self.status[row],
            detail=self.detail[row],
            width=int(self.width[row]),
            height=int(self.height[row]),
            pixel_std=float(self.pixel_std[row]),
            dominant_fraction=float(self.dominant_fraction[row]),
            chroma_r=float(self.chroma_r[row]),
            chroma_g=float(self.chroma_g[row]),
            chroma_b=float(self.chroma_b[row]),
            pixel_hash=self.pixel_hash[row],
            phash=int(self.phash[row]),
            thumbnail=self.copies[row].astype(np.float32) if ok else np.zeros(0, np.float32),
            features=self.features[row].copy() if ok else np.zeros(0, np.float32),
        )


def table_of(inspections: dict[str, Inspection]) -> InspectionTable:
    """A table of `inspections`, in their order."""
    table = InspectionTable(len(inspections))
    for image_id, insp in inspections.items():
        table.add(image_id, insp)
    return table
