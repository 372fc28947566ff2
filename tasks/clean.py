"""clean: ingested manifest -> cleaned manifest + reports/clean/.

Every stored image is decoded once (in a worker pool), then each manifest row is either kept or set
aside with one reason code: corrupt, too_large (decided from the header, never decoded), too_small,
low_information, duplicate / near_duplicate (one copy kept, the report names it), label_conflict (the
same or a near-identical picture under different labels: every copy, except that admitted server
feedback (origin "feedback") never sets the data it contradicts aside: only the feedback copy is
flagged), outlier (nothing like the rest of its class). Awkward-but-valid files (CMYK, 16-bit, palette
with transparency, EXIF-rotated, ...) are normalized by tasks.common.images and kept. Nothing is
deleted from the store or the user's source."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from tqdm import tqdm

from tasks.checks import inspection_cache
from tasks.checks.inspection_table import InspectionTable
from tasks.checks.quality import FEATURE_SIDE, inspect_partition
from tasks.checks.similarity import (
    DEFAULT_MAX_COLOUR_CHANGE,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_RADIUS,
    colours_agree,
    pairs_with_new,
)
from tasks.common import engine
from tasks.common.atomic import write_parquet, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.images import ALPHA_MODES, alpha_background
from tasks.common.manifest import CLEAN_COLUMNS, INGESTED_COLUMNS, read_manifest
from tasks.common.params import Paths, Strict
from tasks.common.reports import (
    class_distribution_chart,
    contact_sheet,
    flagged_frame,
    summary_markdown,
    write_flagged,
)
from tasks.common.store import ImageStore

# row position in the sorted manifest -> (reason, detail, kept_image_id)
Flags = dict[int, tuple[str, str, str]]


class Params(Strict):
    max_pixels: int = Field(40_000_000, gt=0)
    min_side: int = Field(8, ge=1)
    min_std: float = Field(3.0, ge=0)
    max_dominant_fraction: float = Field(0.98, gt=0, le=1)
    # near-duplicates (tasks.checks.similarity, the rule split's groups use too): candidates within
    # this many bits of the aligned perceptual hash, verified by shift-tolerant similarity
    near_duplicate_distance: int = Field(DEFAULT_RADIUS, ge=0, le=32)
    near_duplicate_min_similarity: float = Field(DEFAULT_MIN_SIMILARITY, ge=-1, le=1)
    # ...and in colour: a pair's colour offsets may differ by this share of the larger (null: not checked)
    near_duplicate_max_colour_change: float | None = Field(DEFAULT_MAX_COLOUR_CHANGE, ge=0)
    outlier_zscore: float = Field(5.0, gt=0)
    outlier_min_class_size: int = Field(10, ge=3)

    @model_validator(mode="before")
    @classmethod
    def _accept_old_workers(cls, data):
        """Old params files' clean.workers is accepted but no longer used: engine.workers sizes the
        pool (docs/scaling.md)."""
        if isinstance(data, dict) and "workers" in data:
            data = {key: value for key, value in data.items() if key != "workers"}
        return data


def run(params: Params, paths: Paths) -> dict:
    started = time.perf_counter()
    # sorted by source_path: every "keep one copy" choice below ends in the lowest path, so reruns agree
    rows = read_manifest(paths.ingested, "ingest").sort_values("source_path", kind="stable").reset_index(drop=True)
    if rows.empty:
        raise UserError(f"{paths.ingested} has no images: nothing to clean")
    cache_file = Path(paths.cache) / inspection_cache.INSPECTIONS_FILE
    cached = inspection_cache.load(cache_file, params.max_pixels)
    inspections = inspect_all(sorted(set(rows["image_id"])), paths.store, params, cached)
    inspection_cache.save(cache_file, inspections, params.max_pixels)

    flags: Flags = {}
    flag_unusable(rows, inspections, params, flags)
    near = near_pairs_by_id(
        sorted(set(rows["image_id"].to_numpy()[_alive(rows, flags)])), inspections, params, Path(paths.cache)
    )
    flag_duplicates(rows, inspections, flags)
    flag_near_duplicates(rows, inspections, near, flags)
    outlier_classes = flag_outliers(rows, inspections, params, flags)

    kept = rows.drop(index=list(flags)).reset_index(drop=True)
    kept_at = inspections.rows(kept["image_id"])
    kept["pixel_hash"] = inspections.pixel_hash[kept_at].tolist()
    kept["phash"] = inspections.phash[kept_at].view(np.int64)  # Parquet has no uint64 everyone reads
    kept["alpha_background"] = alpha_backgrounds(kept, paths.store, params.max_pixels)
    flagged = flagged_frame(
        [
            {
                "source_path": rows.at[pos, "source_path"],
                "image_id": rows.at[pos, "image_id"],
                "label": rows.at[pos, "label"],
                "reason": reason,
                "detail": detail,
                "kept_image_id": kept_id,
            }
            for pos, (reason, detail, kept_id) in flags.items()
        ]
    )
    notes = [
        f"too_large above {params.max_pixels} pixels (from the header); too_small below {params.min_side} px",
        f"low_information: std < {params.min_std} in every channel, or over {params.max_dominant_fraction:.0%} "
        "of pixels one value in every channel",
        f"near_duplicate: aligned 64-bit DCT hash within {params.near_duplicate_distance} bits and "
        f"shift-tolerant similarity >= {params.near_duplicate_min_similarity} (tasks.checks.similarity), "
        f"colours within {params.near_duplicate_max_colour_change} of each other",
        f"outlier: robust z > {params.outlier_zscore} both in its class and overall (layout, large-scale "
        f"structure, fine detail), in {outlier_classes} class(es) with >= {params.outlier_min_class_size} images",
    ]
    write_reports(
        paths.report_dir("clean"),
        flagged,
        kept,
        len(rows),
        ImageStore(paths.store).source,  # a Path, or the bytes of a remote (s3://) store's image
        notes,
    )
    # the manifest goes last: downstream stages only ever see it next to matching reports
    write_parquet(kept[INGESTED_COLUMNS + CLEAN_COLUMNS], paths.cleaned)
    return {
        "images": len(rows),
        "kept": len(kept),
        "decoded": len(inspections) - sum(i in cached for i in inspections),
        "flagged": {reason: int(n) for reason, n in flagged["reason"].value_counts().sort_index().items()},
        "seconds": round(time.perf_counter() - started, 2),
    }


def write_reports(
    out_dir: Path, flagged: pd.DataFrame, kept: pd.DataFrame, total: int, image_source, notes: list[str]
) -> None:
    """flagged.csv and summary.md every run; the two pictures only when what they show changed (the
    flagged rows, the kept images per class), as told by a key kept next to them: redrawing a
    contact sheet costs seconds that a re-run with nothing new flagged should not pay."""
    write_flagged(flagged, out_dir)
    write_text(summary_markdown("clean", flagged, kept, total, notes), out_dir / "summary.md")
    pictures = (out_dir / "flagged.png", out_dir / "class_distribution.png")
    key_file = out_dir / "pictures.key"
    key = pictures_key(flagged, kept)
    if all(p.is_file() for p in pictures) and key_file.is_file() and key_file.read_text(encoding="utf-8") == key:
        return
    key_file.unlink(missing_ok=True)  # a crash while drawing leaves no key that vouches for old pictures
    contact_sheet(flagged, image_source, pictures[0])
    class_distribution_chart(kept["label"], pictures[1], "clean: images kept per class")
    write_text(key, key_file)


def pictures_key(flagged: pd.DataFrame, kept: pd.DataFrame) -> str:
    """Digest of everything the pictures are drawn from: the flagged rows (with the image ids, so a
    changed file is a change) and the kept images' label counts."""
    digest = hashlib.sha256(flagged.to_csv(index=False).encode())
    digest.update(kept["label"].astype(str).value_counts().sort_index().to_csv().encode())
    return digest.hexdigest()


def inspect_all(
    image_ids: list[str], store: str, params: Params, cached: InspectionTable | None = None
) -> InspectionTable:
    """Decode every distinct file not in `cached` once, in partitions on the engine (this process
    for small data, else Dask workers: tasks.common.engine), which are given the absolute store path."""
    cached = cached if cached is not None else InspectionTable(0)
    hits = [image_id for image_id in image_ids if image_id in cached]
    results = InspectionTable(len(image_ids))
    results.add_rows(cached, hits)
    todo = [image_id for image_id in image_ids if image_id not in cached]
    missing: list[str] = []
    with (
        engine.session(len(todo), what="clean") as eng,
        tqdm(total=len(todo), desc="clean", unit="img", disable=None) as bar,
    ):
        for done in eng.map_partitions(inspect_partition, todo, ImageStore(store).for_workers(), params.max_pixels):
            for image_id, insp in done:
                if insp is None:
                    missing.append(image_id)
                else:
                    results.add(image_id, insp)
            bar.update(len(done))
    missing += ImageStore(store).missing(hits)
    if missing:
        absent = set(missing)
        missing = [image_id for image_id in image_ids if image_id in absent]
        raise UserError(
            f"{len(missing)} image(s) of the ingested manifest are missing from the store "
            f"{store} (first: {missing[0]}): run the `ingest` stage again"
        )
    return results


def alpha_backgrounds(rows: pd.DataFrame, store: str, max_pixels: int) -> list[str]:
    """Per row, the background its transparency is composited onto ('' for none): only files whose
    header mode can carry transparency are opened again (they all decoded already)."""
    modes = rows["mode"].astype(str) if "mode" in rows.columns else pd.Series("", rows.index)
    images = ImageStore(store)
    return [
        alpha_background(images.source(image_id), max_pixels) if mode in ALPHA_MODES else ""
        for image_id, mode in zip(rows["image_id"], modes)
    ]


def flag_unusable(rows: pd.DataFrame, inspections: InspectionTable, params: Params, flags: Flags) -> None:
    at = inspections.rows(rows["image_id"])
    status, detail = inspections.status[at], inspections.detail[at]
    width, height = inspections.width[at], inspections.height[at]
    spread, dominant = inspections.pixel_std[at], inspections.dominant_fraction[at]
    for pos in range(len(rows)):
        if status[pos] != "ok":
            flags[pos] = (status[pos], detail[pos], "")
        elif min(width[pos], height[pos]) < params.min_side:
            flags[pos] = ("too_small", f"{width[pos]}x{height[pos]}, smaller side under {params.min_side}", "")
        elif spread[pos] < params.min_std:
            flags[pos] = ("low_information", f"std {spread[pos]:.2f} < {params.min_std} in every channel", "")
        elif dominant[pos] > params.max_dominant_fraction:
            flags[pos] = ("low_information", f"{dominant[pos]:.1%} of pixels have one value in every channel", "")


def _alive(rows: pd.DataFrame, flags: Flags) -> list[int]:
    return [pos for pos in range(len(rows)) if pos not in flags]


def _from_feedback(rows: pd.DataFrame) -> np.ndarray:
    """Per row: admitted server feedback (origin "feedback"), which never outranks the data."""
    if "origin" not in rows.columns:
        return np.zeros(len(rows), dtype=bool)
    return (rows["origin"].astype(str) == "feedback").to_numpy()


def flag_duplicates(rows: pd.DataFrame, inspections: InspectionTable, flags: Flags) -> None:
    """Same decoded pixels (byte-identical files, or one picture in two containers): keep the lowest
    source_path; if the copies carry different labels none of them can be trusted, except that
    feedback contradicting the data is set aside alone (one POST must not remove a training image)."""
    feedback = _from_feedback(rows)
    groups: dict[str, list[int]] = defaultdict(list)
    pixel_hashes = inspections.pixel_hash[inspections.rows(rows["image_id"])]
    for pos in _alive(rows, flags):
        groups[pixel_hashes[pos]].append(pos)
    for members in groups.values():
        if len(members) < 2:
            continue
        labels = sorted(set(rows.loc[members, "label"].astype(str)))
        trusted = [pos for pos in members if not feedback[pos]]
        trusted_labels = set(rows.loc[trusted, "label"].astype(str))
        if len(labels) > 1 and len(trusted_labels) == 1:
            (label,) = trusted_labels
            for pos in members:
                if feedback[pos] and str(rows.at[pos, "label"]) != label:
                    flags[pos] = (
                        "label_conflict",
                        f"feedback: same pixels as {rows.at[trusted[0], 'source_path']} labelled {label}",
                        "",
                    )
            labels = [label]
        members = sorted((pos for pos in members if pos not in flags), key=lambda pos: feedback[pos])  # data first
        if len(labels) > 1:
            for pos in members:
                flags[pos] = (
                    "label_conflict",
                    f"same pixels as {len(members) - 1} other file(s); labels {', '.join(labels)}",
                    "",
                )
            continue
        keep = members[0]
        for pos in members[1:]:
            same_file = rows.at[pos, "image_id"] == rows.at[keep, "image_id"]
            detail = f"{'byte-identical to' if same_file else 'same pixels as'} {rows.at[keep, 'source_path']}"
            flags[pos] = ("duplicate", detail, rows.at[keep, "image_id"])


def near_pairs_by_id(
    image_ids: list[str], inspections: InspectionTable, params: Params, cache_dir: Path
) -> pd.DataFrame:
    """Every near pair (columns a < b, image ids) among `image_ids` (the images that passed the
    per-image checks), by tasks.checks.similarity's rule: aligned hashes within
    near_duplicate_distance bits AND shift-tolerant similarity >= near_duplicate_min_similarity, or
    nearest neighbours by descriptor that registration verifies (crops, rotations, shifts). The hash
    finds candidates fast, but on small, similar pictures (digits, sneakers) distinct images often land
    within a few bits; the similarity tells a resized, shifted or re-encoded copy from a look-alike.

    The pairs among images a previous run searched (the persisted index, tasks.checks.inspection_cache)
    are reused and only images new to it are looked up (and the nearest of known images whose nearest
    left the data), at the cost of what is new: every pair a search over everything finds, and perhaps
    a pair it would no longer rank (tasks.checks.registration)."""
    index_file = cache_dir / inspection_cache.NEAR_INDEX_FILE
    key = inspection_cache.near_index_key(params.near_duplicate_distance, params.near_duplicate_min_similarity)
    index = inspection_cache.load_near_index(index_file, key)
    new, ranks, search_again = index.ranks_for(image_ids)
    position = {image_id: k for k, image_id in enumerate(image_ids)}
    # known pairs whose two images are both still searched (an image may have left the data);
    # plain dicts and sets: pandas' isin on Arrow strings costs seconds at this size
    known_at = np.array(
        [
            (position[a], position[b])
            for a, b in zip(index.pairs["a"].tolist(), index.pairs["b"].tolist())
            if a in position and b in position
        ],
        dtype=np.int64,
    )
    found = inspections.rows(image_ids)
    added, ranks = pairs_with_new(
        inspections.phash[found],
        inspections.copies,
        new,
        params.near_duplicate_distance,
        params.near_duplicate_min_similarity,
        rows=found,
        ranks=ranks,
        search_again=search_again,
    )
    at = np.unique(np.concatenate([known_at.reshape(-1, 2), added]).astype(np.int64), axis=0).reshape(-1, 2)
    ids = np.asarray(image_ids, dtype=object)
    pairs = pd.DataFrame({"a": ids[at[:, 0]], "b": ids[at[:, 1]]}).sort_values(["a", "b"], ignore_index=True)
    inspection_cache.save_near_index(index_file, key, image_ids, pairs, ranks)
    # the index keeps every pair the grey rule found; the colour check is cheap and applied each run
    chroma_a, chroma_b = (inspections.chroma(inspections.rows(pairs[side])) for side in ("a", "b"))
    agree = colours_agree(chroma_a, chroma_b, params.near_duplicate_max_colour_change)
    return pairs[agree].reset_index(drop=True)


# PIL format names of lossy containers (WEBP may be lossless; its header does not say, so it counts as lossy)
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "JPEG2000"})


def flag_near_duplicates(rows: pd.DataFrame, inspections: InspectionTable, near: pd.DataFrame, flags: Flags) -> None:
    """Near pairs (`near`, from near_pairs_by_id) with different labels are a label_conflict for both,
    unless one is feedback and the other is not: then only the feedback copy (the data stays);
    otherwise an image not yet set aside is kept and its same-label neighbours are flagged naming it
    (so every flagged one is a near pair of its kept one). Who keeps first: a copy in the data before
    feedback, a lossless file before a lossy one (a JPEG copy never displaces its PNG original), then
    source_path order."""
    alive = _alive(rows, flags)
    feedback = _from_feedback(rows)[alive]
    lossy = rows.loc[alive, "format"].isin(LOSSY_FORMATS).to_numpy()
    alive_ids = rows["image_id"].to_numpy()[alive]
    source_paths = rows["source_path"].to_numpy()
    hashes = inspections.phash[inspections.rows(alive_ids)]
    labels = rows.loc[alive, "label"].astype(str).to_numpy()
    # an image is alive at most once (copies of one file are duplicates), so ids name alive positions
    position = {image_id: k for k, image_id in enumerate(alive_ids)}
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in zip(near["a"].tolist(), near["b"].tolist()):
        if a in position and b in position:
            neighbours[position[a]].append(position[b])
            neighbours[position[b]].append(position[a])

    def bits(a: int, b: int) -> int:
        return int(hashes[a] ^ hashes[b]).bit_count()

    def contradicts(b: int, a: int) -> bool:
        """b's label casts doubt on a's: different, and not feedback against the data."""
        return labels[b] != labels[a] and not (feedback[b] and not feedback[a])

    conflicted = {a for a, others in neighbours.items() if any(contradicts(b, a) for b in others)}
    for a in sorted(conflicted):
        b = min(n for n in neighbours[a] if contradicts(n, a))
        flags[alive[a]] = (
            "label_conflict",
            f"{bits(a, b)} bits from {source_paths[alive[b]]} labelled {labels[b]}",
            "",
        )
    set_aside: set[int] = set(conflicted)
    for a in sorted(range(len(alive)), key=lambda a: (feedback[a], lossy[a])):  # stable: then source_path
        if a in set_aside:
            continue
        for b in sorted(neighbours.get(a, ())):
            if b not in set_aside:
                set_aside.add(b)
                flags[alive[b]] = (
                    "near_duplicate",
                    f"{bits(a, b)} bits from {source_paths[alive[a]]}",
                    alive_ids[a],
                )


OUTLIER_NEIGHBOURS = 5
OUTLIER_REFERENCES = 2000  # per group; bounds the neighbour search at n x 2000 distances
OUTLIER_BLOCK = 10_000  # members measured at once (160 MB of distances)
# The noise test counts only for images with less than this share of their AC energy at large scales,
# whatever their z: uniform noise keeps 2-7 % there, every real picture measured 19 % or more (Fashion-
# MNIST's train part, where it was tuned: noise <= 5.5 %, pictures >= 19.1 %; its test part and digits
# agree), a 1-bit scan of a digit 54-59 %. Without it the z alone set aside a valid 1-bit digit (a class
# of smooth pictures has a tight spread), and a factor 2 on the z, which kept clean Fashion images (raw
# z up to 8.5) in, missed a planted noise image at 8.8 (BENCHMARKS.md, data quality on digits).
NOISE_MAX_STRUCTURE_SHARE = 0.10


def _robust_z(values: np.ndarray, groups: np.ndarray, min_size: int) -> np.ndarray:
    """(value - group median) / (1.4826 MAD of the group); NaN in groups smaller than min_size."""
    z = np.full(len(values), np.nan)
    for group in np.unique(groups):
        members = groups == group
        if members.sum() < min_size:
            continue
        centre = np.median(values[members])
        spread = 1.4826 * np.median(np.abs(values[members] - centre))
        z[members] = (values[members] - centre) / max(spread, 1e-6)
    return z


def _log_neighbour_distance(thumbs: np.ndarray, groups: np.ndarray, min_size: int) -> np.ndarray:
    """Log mean distance to the 5 nearest other images of the same group (NaN for small groups)."""
    out = np.full(len(thumbs), np.nan)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < min_size:
            continue
        refs = members[np.linspace(0, len(members) - 1, min(len(members), OUTLIER_REFERENCES)).astype(int)]
        r = thumbs[refs]
        r_sq = (r**2).sum(1)[None, :]
        k = min(OUTLIER_NEIGHBOURS, len(refs) - 1)
        # a block of members at a time: all 500k images against 2,000 references would be 8 GB at once
        for start in range(0, len(members), OUTLIER_BLOCK):
            block = members[start : start + OUTLIER_BLOCK]
            x = thumbs[block]
            sq = (x**2).sum(1)[:, None] + r_sq - 2 * x @ r.T
            sq[block[:, None] == refs[None, :]] = np.inf  # an image is not its own neighbour
            nearest = np.sqrt(np.maximum(np.partition(sq, k - 1, axis=1)[:, :k], 0)).mean(axis=1)
            out[block] = np.log(np.maximum(nearest, 1e-6))
    return out


def outlier_scores(features: np.ndarray, labels: np.ndarray, min_class_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the strongest of three robust z-scores and which test gave it (NaN / "" for
    classes too small):

    - layout: log mean distance to the 5 nearest look-alikes (standardized 8x8 thumbnails). Nearest
      neighbours, not a class centre: an odd but real member (a coat photographed open) still has
      look-alikes, pure noise has none.
    - no structure: how little energy sits at large scales (uniform noise), counted only below
      NOISE_MAX_STRUCTURE_SHARE of it;
    - no detail: how little sits at fine scales (a flat gradient).

    Every test counts only where the image is extreme BOTH within its class and within the whole
    data set: a mislabelled picture is unlike its class but like plenty of others (that is
    validate's suspect_label), and a class made of smooth pictures is smooth everywhere but
    ordinary at home."""
    thumbs = features[:, : FEATURE_SIDE * FEATURE_SIDE]
    everyone = np.zeros(len(labels), dtype=np.int8)

    def both(class_values: np.ndarray, overall_values: np.ndarray) -> np.ndarray:
        return np.fmin(_robust_z(class_values, labels, min_class_size), _robust_z(overall_values, everyone, 1))

    tests = {
        "unlike its nearest look-alikes": both(
            _log_neighbour_distance(thumbs, labels, min_class_size),
            _log_neighbour_distance(thumbs, everyone, min_class_size),
        ),
        "almost no large-scale structure (noise-like)": np.where(
            features[:, -2] < np.log(NOISE_MAX_STRUCTURE_SHARE), both(-features[:, -2], -features[:, -2]), np.nan
        ),
        "almost no fine detail (flat gradient)": both(-features[:, -1], -features[:, -1]),
    }
    stacked = np.stack(list(tests.values()), axis=1)
    scores = np.full(len(labels), np.nan)
    reasons = np.full(len(labels), "", dtype=object)
    checked = ~np.isnan(stacked).all(axis=1)
    best = np.nanargmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=1)
    scores[checked] = stacked[checked, best[checked]]
    reasons[checked] = np.array(list(tests))[best[checked]]
    return scores, reasons


def flag_outliers(rows: pd.DataFrame, inspections: InspectionTable, params: Params, flags: Flags) -> int:
    """Returns the number of classes large enough to be checked."""
    alive = _alive(rows, flags)
    if not alive:
        return 0
    labels = rows.loc[alive, "label"].astype(str).to_numpy()
    feats = inspections.features[inspections.rows(rows["image_id"].to_numpy()[alive])]
    scores, reasons = outlier_scores(feats, labels, params.outlier_min_class_size)
    for a in np.flatnonzero(scores > params.outlier_zscore):
        flags[alive[a]] = ("outlier", f"robust z {scores[a]:.1f}: {reasons[a]}, in class {labels[a]} and overall", "")
    return int(sum(n >= params.outlier_min_class_size for n in pd.Series(labels).value_counts()))


def main(argv: list[str] | None = None) -> int:
    return stage_main("clean", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
