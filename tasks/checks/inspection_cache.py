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
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.checks.inspection_table import COPY_DTYPE, InspectionTable
from tasks.checks.quality import COPY_SIZE, FEATURE_SIZE
from tasks.checks.registration import DESCRIPTOR_NAMES, K_NEAREST, Ranks
from tasks.common.atomic import atomic_path, write_parquet

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
# everything an Inspection is computed by
_CODE = (_HERE / "quality.py", _HERE / "phash.py", _HERE.parent / "common" / "images.py")
# file names under paths.cache: clean writes both, split reads the aligned copies of the first
INSPECTIONS_FILE = "clean_inspections.parquet"
NEAR_INDEX_FILE = "clean_near_index.parquet"
# stored as they are; phash is stored as int64 (Parquet has no uint64 everyone reads)
_SCALARS = tuple(name for name in InspectionTable.SCALARS if name != "phash")


def code_version() -> str:
    digest = hashlib.sha256()
    for source in _CODE:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


_BATCH_ROWS = 50_000  # the cache is read and written this many rows at a time: memory stays bounded


def _fixed_binary(matrix: np.ndarray) -> pa.Array:
    """Each row of a C-contiguous matrix as one fixed-size binary value, without a copy per row."""
    matrix = np.ascontiguousarray(matrix)
    width = matrix.shape[1] * matrix.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(matrix), [None, pa.py_buffer(matrix)])


def _matrix(column: pa.Array, dtype, width: int) -> np.ndarray:
    """The inverse of _fixed_binary: rows of `width` values of `dtype`."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    itemsize = np.dtype(dtype).itemsize * width
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    data = data[column.offset * itemsize : (column.offset + len(column)) * itemsize]
    return data.view(dtype).reshape(len(column), width)


def _release_arrow_memory() -> None:
    """Arrow's allocator keeps what a batched read or write freed (1.3 GB after reading 500k images'
    copies); give it back, or it counts against the driver's memory until the stage ends."""
    pa.default_memory_pool().release_unused()


def _reader(path: Path) -> pq.ParquetFile:
    """Reads a row group a column at a time (pre-buffering holds a whole row group of copies; at 500k
    images the reader then kept 1.1 GB, now under 0.3 GB)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


def _current(batch: pa.RecordBatch, max_pixels: int | None) -> np.ndarray:
    """Rows computed by this code (and, when given, under this pixel limit)."""
    keep = batch.column("code").to_numpy(zero_copy_only=False) == code_version()
    if max_pixels is not None:
        keep &= batch.column("max_pixels").to_numpy() == max_pixels
    return keep


def _batch_columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """The InspectionTable columns of a batch of cache rows."""
    return {
        **{name: batch.column(name).to_numpy(zero_copy_only=False) for name in _SCALARS},
        "phash": batch.column("phash").to_numpy().view(np.uint64),
        "copies": _matrix(batch.column("copy"), COPY_DTYPE, COPY_SIZE),
        "features": _matrix(batch.column("features"), np.float32, FEATURE_SIZE),
    }


def load(path: Path, max_pixels: int) -> InspectionTable:
    if not path.is_file():
        return InspectionTable(0)
    try:
        with _reader(path) as reader:
            table = InspectionTable(reader.metadata.num_rows)
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS):
                batch = batch.filter(pa.array(_current(batch, max_pixels)))
                table.extend(batch.column("image_id").to_pylist(), _batch_columns(batch))
                del batch
                _release_arrow_memory()  # each batch: else the freed ones pile up until the read ends
        _release_arrow_memory()
        return table
    except Exception as exc:  # a damaged or foreign cache only costs a re-decode
        log.warning("ignoring the inspection cache %s: %s", path, exc)
        return InspectionTable(0)


def load_copies(path: Path, image_ids: list[str], out: np.ndarray) -> np.ndarray:
    """Fill rows of `out` with the aligned near-duplicate copies (Inspection.thumbnail) the cache
    holds for `image_ids` (row k for image_ids[k]), for split; returns which rows it filled. Any
    pixel limit's entry will do: the limit only decides whether an image is decoded, never what its
    copy is. Read a batch at a time, so memory holds `out` and one batch."""
    filled = np.zeros(len(image_ids), dtype=bool)
    if not path.is_file() or not image_ids:
        return filled
    where = {image_id: k for k, image_id in enumerate(image_ids)}
    try:
        with _reader(path) as reader:
            for batch in reader.iter_batches(batch_size=_BATCH_ROWS, columns=["image_id", "status", "copy", "code"]):
                keep = _current(batch, None) & (batch.column("status").to_numpy(zero_copy_only=False) == "ok")
                ids = batch.column("image_id").to_pylist()
                at = np.array([where.get(i, -1) if k else -1 for i, k in zip(ids, keep)], dtype=np.int64)
                wanted = np.flatnonzero(at >= 0)
                if len(wanted):
                    out[at[wanted]] = _matrix(batch.column("copy"), COPY_DTYPE, COPY_SIZE)[wanted]
                    filled[at[wanted]] = True
                del batch
                _release_arrow_memory()
        _release_arrow_memory()
    except Exception as exc:  # a damaged or foreign cache only costs a re-decode
        log.warning("ignoring the inspection cache %s: %s", path, exc)
        return np.zeros(len(image_ids), dtype=bool)
    return filled


def near_index_key(radius: int, min_similarity: float) -> str:
    """What decides whether two inspected images are a near pair: the inspection code (their hashes and
    copies), the rule's code and its two settings. The pixel limit needs no place here: an image is
    only in the index with an Inspection of its own run's limit."""
    digest = hashlib.sha256(f"{code_version()}:{radius}:{min_similarity!r}".encode())
    digest.update((_HERE / "similarity.py").read_bytes())
    digest.update((_HERE / "registration.py").read_bytes())
    return digest.hexdigest()[:16]


class NearIndex(NamedTuple):
    members: list[str]  # the images the last run searched for near-duplicates among
    pairs: pd.DataFrame  # every verified near pair between them (columns a < b, image ids)
    ranks: Ranks  # each member's rank floors and nearest (positions in members; tasks.checks.registration)

    def ranks_for(self, image_ids: list[str]) -> tuple[np.ndarray, Ranks, np.ndarray]:
        """(new, ranks, search_again) for a search among `image_ids`: which images the index does not
        hold, the known images' floors and nearest renumbered to positions in image_ids, and which known
        images must search their nearest again because one of them left (removed, or no longer passing
        the per-image checks): such an image's floor may be above its true K-th best now, so a new image
        that only takes the freed place would not be seen."""
        member_at = {image_id: k for k, image_id in enumerate(self.members)}
        new = np.array([image_id not in member_at for image_id in image_ids], dtype=bool)
        position = {image_id: k for k, image_id in enumerate(image_ids)}
        # each member's position now, -1 when it left; the extra last entry keeps an empty place (-1) at -1
        now_at = np.array([position.get(member, -1) for member in self.members] + [-1], dtype=np.int64)
        known_rows = np.flatnonzero(~new)
        kept = [member_at[image_ids[k]] for k in known_rows]
        remembered = self.ranks.nearest[:, kept]  # [D, known, K] positions among the members
        ranks = Ranks.unsearched(len(image_ids))
        ranks.floors[:, known_rows] = self.ranks.floors[:, kept]
        ranks.nearest[:, known_rows] = now_at[remembered]
        search_again = np.zeros(len(image_ids), dtype=bool)
        search_again[known_rows[((remembered >= 0) & (now_at[remembered] < 0)).any(axis=(0, 2))]] = True
        return new, ranks, search_again


_FLOORS = tuple(f"floor_{name}" for name in DESCRIPTOR_NAMES)
_NEAREST = tuple(f"nearest_{name}" for name in DESCRIPTOR_NAMES)


def load_near_index(path: Path, key: str) -> NearIndex:
    """The index the last run saved; an empty one when the key differs."""
    empty = NearIndex([], pd.DataFrame({"a": pd.Series(dtype=str), "b": pd.Series(dtype=str)}), Ranks.unsearched(0))
    if not path.is_file():
        return empty
    try:
        frame = pd.read_parquet(path)
        if frame.empty or set(frame["key"]) != {key}:
            return empty
        member_rows = frame[frame["b"].isna()]
        floors = member_rows[list(_FLOORS)].to_numpy(np.float32).T
        nearest = np.stack([member_rows[list(_nearest_columns(name))].to_numpy(np.int64) for name in _NEAREST])
        pairs = frame.loc[frame["b"].notna(), ["a", "b"]].reset_index(drop=True)
        return NearIndex(member_rows["a"].tolist(), pairs, Ranks(floors, nearest))
    except Exception as exc:  # a damaged or foreign index only costs a fresh search
        log.warning("ignoring the near-duplicate index %s: %s", path, exc)
        return empty


def _nearest_columns(name: str) -> list[str]:
    """One integer column per place (plain columns: no Python object per image at 500k images)."""
    return [f"{name}_{place}" for place in range(K_NEAREST)]


def save_near_index(path: Path, key: str, members: list[str], pairs: pd.DataFrame, ranks: Ranks) -> None:
    """One file, so members and pairs can never come from different runs: member rows have b = null,
    their floors and nearest (positions in the member rows' order); pair rows have neither."""
    member_rows = pd.DataFrame({"a": list(members), "b": None})
    for k in range(len(DESCRIPTOR_NAMES)):
        member_rows[_FLOORS[k]] = ranks.floors[k]
        for place, column in enumerate(_nearest_columns(_NEAREST[k])):
            member_rows[column] = ranks.nearest[k, :, place]
    frame = pd.concat([member_rows, pairs[["a", "b"]]], ignore_index=True).assign(key=key)
    write_parquet(frame, path)


def save(path: Path, inspections: InspectionTable, max_pixels: int) -> None:
    """Replaces the cache with `inspections` (the images of this run, so it never outgrows the data),
    in id order, written a batch at a time (no second copy of 500k aligned copies in memory)."""
    if not len(inspections):
        path.unlink(missing_ok=True)
        return
    order = np.argsort(np.asarray(inspections.ids, dtype=object), kind="stable")
    schema = None
    with atomic_path(path) as tmp:
        writer = None
        try:
            for start in range(0, len(order), _BATCH_ROWS):
                rows = order[start : start + _BATCH_ROWS]
                columns = {
                    "image_id": pa.array([inspections.ids[k] for k in rows], pa.string()),
                    **{name: pa.array(getattr(inspections, name)[rows].tolist()) for name in _SCALARS},
                    "phash": pa.array(inspections.phash[rows].view(np.int64)),
                    "copy": _fixed_binary(inspections.copies[rows]),
                    "features": _fixed_binary(inspections.features[rows]),
                    "max_pixels": pa.array(np.full(len(rows), max_pixels, dtype=np.int64)),
                    "code": pa.array([code_version()] * len(rows), pa.string()),
                }
                batch = pa.RecordBatch.from_pydict(columns, schema=schema)
                schema = batch.schema
                writer = writer or pq.ParquetWriter(tmp, schema)
                writer.write_batch(batch)
                del batch, columns
                _release_arrow_memory()
        finally:
            if writer is not None:
                writer.close()
            _release_arrow_memory()
