"""ingest: source (folder | csv/parquet manifest | sample:digits) + inbox + admitted feedback ->
content-addressed store and the ingested manifest. Nothing is decoded here (clean does that); files
that are not images at all, hidden files, unusable manifest rows and anything that is not a plain file
are listed in reports/ingest/skipped.csv.

Reading the user's folders safely: every entry is lstat'ed before anything is opened, so a FIFO or a
device is reported (`not_regular`), never read (which could hang or never end); a symlink is followed
only when its target stays inside the folder being read (else `outside_source`, unless
ingest.allow_outside_paths for the source), a dangling one is `broken_link`, one that leads back to a
folder being walked is `link_loop`. Files are opened without following links and checked again with
fstat; a file that changes or vanishes while it is read is `unreadable`, never a traceback.

Feedback (paths.feedback, written by `imgcls serve`) is quarantined: ingest.feedback decides what is
admitted. A feedback label never overrides the data: an image already in the source / inbox (or in
the store from earlier runs) under another label, or posted with two different labels, goes to
reports/ingest/feedback_review.csv (or skipped.csv as label_conflict) instead of the manifest, and a
label no trusted image has is refused (unknown_label) unless allow_new_classes.

Human review decisions (paths.label_decisions, written by `imgcls review`; tasks/common/label_decisions.py)
are applied on every run: relabel sets the label (original_label keeps the source's), exclude leaves the
image out (skipped.csv, excluded_by_review), keep marks it checked (review_decision) for validate."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import re
import stat
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.common import label_decisions
from tasks.common.atomic import atomic_path, write_csv, write_parquet, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.feedback_inbox import FeedbackError, Submission, list_sidecars, read_submission
from tasks.common.images import DecodeError, is_image_name, probe
from tasks.common.manifest import INGESTED_COLUMNS
from tasks.common.params import Paths, Strict
from tasks.common.sample import SAMPLE_PREFIX, materialize_sample
from tasks.common.store import ImageStore

log = logging.getLogger(__name__)
SKIPPED_COLUMNS = ["source_path", "reason", "detail"]
REVIEW_COLUMNS = [
    "source_path",
    "image_id",
    "label",
    "conflicting_labels",
    "existing_source",
    "received_at",
    "client_address",
    "token_id",
    "detail",
]
# text that means "no label" in a table: what NaN and pd.NA become when a column is cast to str
_MISSING_TEXT = {"nan", "<na>"}
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")


class FeedbackPolicy(Strict):
    admit: bool = True
    on_conflict: Literal["review", "drop"] = "review"
    allow_new_classes: bool = False


class Params(Strict):
    source: str = "sample:digits"
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"
    allow_outside_paths: bool = False
    sample_upscale: int = 4
    feedback: FeedbackPolicy = FeedbackPolicy()
    # a folder of unlabelled images for `imgcls review group` (tasks/labelling); ingest never reads it
    unlabelled: str | None = None


@dataclass
class Candidate:
    """One file to ingest: where it is on disk (links resolved) and how the user named it."""

    file: Path
    source_path: str
    label: str
    origin: str
    given_split: str = ""


class _Unusable(Exception):
    """A file found at scan time that cannot be read as one now: (reason, detail) for skipped.csv."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def run(params: Params, paths: Paths) -> dict:
    skipped: list[dict] = []
    candidates = list(_source_candidates(params, paths, skipped))
    inbox = Path(paths.inbox)
    if inbox.is_dir():
        candidates += list(_folder_candidates(inbox, "inbox", skipped, display_prefix=str(inbox)))
    if not candidates:
        raise UserError(f"no images found in source {params.source!r} or inbox {paths.inbox!r}")

    cache = _HashCache(Path(paths.cache) / "ingest_hashes.parquet")
    previous = _previous_manifest(Path(paths.ingested))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    rows, copied = [], 0
    store = _StoreWriter(paths.store)
    for cand in tqdm(candidates, desc="ingest", unit="img", disable=None):
        row, n = _ingest_one(cand, cache, store, previous, now, skipped)
        if row is not None:
            rows.append(row)
            copied += n
    if not rows:
        raise UserError(f"no readable images in source {params.source!r} or inbox {paths.inbox!r}")

    # --- human review decisions (`imgcls review`, tasks/common/label_decisions.py): relabel / exclude / keep
    decided = label_decisions.load_for_ingest(paths.label_decisions)
    rows, excluded = label_decisions.apply_decisions(rows, decided)
    skipped += excluded
    if not rows:
        raise UserError(f"every image of source {params.source!r} is excluded by {paths.label_decisions}")

    review: list[dict] = []
    pending = 0
    if params.feedback.admit:
        feedback_rows, n = _admit_feedback(
            params.feedback, paths, store, rows, previous, cache, now, skipped, review, decided or {}
        )
        feedback_rows, _ = label_decisions.apply_decisions(feedback_rows, decided)  # marks them; none excluded here
        rows += feedback_rows
        copied += n
    else:
        pending = len(list_sidecars(paths.feedback)[0])

    # a decisions file adds original_label / review_decision (validate skips human-checked images)
    review_columns = [c for c in label_decisions.MANIFEST_COLUMNS if decided is not None and c not in INGESTED_COLUMNS]
    manifest = pd.DataFrame(rows, columns=INGESTED_COLUMNS + review_columns).sort_values("source_path", kind="stable")
    manifest = manifest.reset_index(drop=True)
    cache.save()
    pruned = store.prune(set(manifest["image_id"]))
    write_parquet(manifest, paths.ingested)
    _write_reports(paths.report_dir("ingest"), manifest, skipped, review)
    return {
        "images": len(manifest),
        "unique_files": int(manifest["image_id"].nunique()),
        "classes": int(manifest["label"].nunique()),
        "hashed": cache.misses,
        "copied": copied,
        "pruned_from_store": pruned,
        "skipped": len(skipped),
        "from_inbox": int((manifest["origin"] == "inbox").sum()),
        "from_feedback": int((manifest["origin"] == "feedback").sum()),
        "feedback_review": len(review),
        "feedback_pending": pending,
        "relabelled_by_review": int((manifest.get("review_decision", pd.Series(dtype=str)) == "relabel").sum()),
        "excluded_by_review": len(excluded),
    }


def _ingest_one(
    cand: Candidate, cache: _HashCache, store: _StoreWriter, previous: dict, now: str, skipped: list[dict]
) -> tuple[dict | None, int]:
    """Hash (or take from the cache) and copy one file; an unusable one is reported, not raised."""
    try:
        entry = cache.lookup(cand.file)
        if entry is None:
            entry, key = _describe_file(cand.file)
            cache.store(key, entry)
        copied = store.copy_in(cand.file, entry)
    except _Unusable as exc:
        skipped.append({"source_path": cand.source_path, "reason": exc.reason, "detail": exc.detail})
        return None, 0
    except OSError as exc:
        skipped.append({"source_path": cand.source_path, "reason": "unreadable", "detail": _os_error(exc)})
        return None, 0
    first = previous.get("times", {}).get((cand.source_path, entry["image_id"]), now)
    return {
        **entry,
        "source_path": cand.source_path,
        "label": cand.label,
        "ingested_at": first,
        "origin": cand.origin,
        "given_split": cand.given_split,
    }, copied


# --- labels --------------------------------------------------------------------------------------


def _text(value) -> str:
    """A manifest cell as text: None / NaN / <NA> are empty."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # arrays and other non-scalars
        pass
    return str(value).strip()


def label_text(value, table: bool = True) -> str:
    """One class name for one label whatever the table stored it as: 3, 3.0, "3" and "3.0" are all
    "3"; 2.5 and "2.50" are "2.5"; empty, blank, None and NaN are "" (no label), and so, in a table
    (not a folder name), is the text "nan" / "<NA>" that a NaN cast to str leaves behind."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return _number(float(value))
    text = _text(value)
    if table and text.lower() in _MISSING_TEXT:
        return ""
    if _DECIMAL.fullmatch(text):
        return _number(float(text), text)
    return text


def _number(value: float, text: str | None = None) -> str:
    if math.isinf(value):
        return str(value)
    if value.is_integer():
        # the integer part of the text itself when there is one: floats lose digits past 2**53
        return str(int(text.split(".")[0] or "0")) if text is not None else str(int(value))
    return repr(value)


# --- sources -------------------------------------------------------------------------------------


def _source_candidates(params: Params, paths: Paths, skipped: list[dict]):
    source = params.source
    if source.startswith(SAMPLE_PREFIX):
        root = materialize_sample(source, Path(paths.cache) / "samples", params.sample_upscale)
        return _folder_candidates(root, "source", skipped, display_prefix=source)
    path = Path(source)
    if path.is_dir():
        return _folder_candidates(path, "source", skipped, allow_outside=params.allow_outside_paths)
    if path.is_file() and path.suffix.lower() in (".csv", ".parquet"):
        return _manifest_candidates(path, params, skipped)
    if not path.exists():
        raise UserError(
            f"ingest.source: {source!r} does not exist (a folder, a .csv/.parquet manifest or sample:digits)"
        )
    raise UserError(f"ingest.source: {source!r} is neither a folder nor a .csv/.parquet manifest")


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _os_error(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _folder_candidates(
    root: Path, origin: str, skipped: list[dict], display_prefix: str | None = None, allow_outside: bool = False
) -> Iterator[Candidate]:
    """Class-subfolder layout: root/<label>/**/<file>. A nested folder inside a class folder still
    belongs to that class; files directly under root have no label. Symlinks (files or folders,
    class folders too) are followed while they stay inside root (anywhere with allow_outside)."""
    real_root = os.path.realpath(root)

    def shown(rel: Path) -> str:
        return f"{display_prefix}/{rel.as_posix()}" if display_prefix else rel.as_posix()

    def skip(rel: Path, reason: str, detail: str) -> None:
        skipped.append({"source_path": shown(rel), "reason": reason, "detail": detail})

    def walk(directory: str, real_dir: str, rel: Path, walking: frozenset[str]) -> Iterator[Candidate]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skip(rel, "unreadable", f"folder cannot be listed ({_os_error(exc)})")
            return
        for entry in entries:
            rel_e = rel / entry.name
            hidden = _is_hidden(rel_e)
            try:
                st = os.lstat(entry.path)
            except OSError as exc:  # vanished between listing and lstat
                skip(rel_e, "unreadable", _os_error(exc))
                continue
            real = os.path.join(real_dir, entry.name)
            if stat.S_ISLNK(st.st_mode):
                if hidden:
                    skip(rel_e, "hidden", "hidden file or folder")
                    continue
                real = os.path.realpath(entry.path)
                try:
                    st = os.stat(entry.path)  # the target
                except OSError as exc:
                    what = "symlink loop" if exc.errno == errno.ELOOP else f"dangling symlink ({_os_error(exc)})"
                    skip(rel_e, "broken_link", what)
                    continue
                if not allow_outside and not _inside(real, real_root):
                    skip(rel_e, "outside_source", "symlink leads outside the folder being read")
                    continue
            if stat.S_ISDIR(st.st_mode):
                if real in walking:
                    skip(rel_e, "link_loop", "symlink back to a folder that contains it")
                    continue
                yield from walk(entry.path, real, rel_e, walking | {real})
            elif hidden:
                skip(rel_e, "hidden", "hidden file or folder")
            elif not stat.S_ISREG(st.st_mode):
                skip(rel_e, "not_regular", f"{_kind(st.st_mode)}, not read")
            elif len(rel_e.parts) < 2:
                skip(rel_e, "no_label", "not inside a class folder")
            elif not label_text(rel_e.parts[0], table=False):
                skip(rel_e, "no_label", f"class folder name {rel_e.parts[0]!r} is blank")
            elif not is_image_name(entry.name):
                skip(rel_e, "not_image", f"extension {Path(entry.name).suffix or '(none)'!r}")
            else:
                yield Candidate(Path(real), shown(rel_e), label_text(rel_e.parts[0], table=False), origin)

    yield from walk(str(root), real_root, Path(), frozenset({real_root}))


def _read_manifest_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a broken table
        raise UserError(
            f"{path}: cannot read manifest ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        ) from None


def _manifest_candidates(path: Path, params: Params, skipped: list[dict]):
    table = _read_manifest_table(path)
    missing = [c for c in (params.path_column, params.label_column) if c not in table.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(map(str, table.columns))}); "
            "set ingest.path_column / ingest.label_column"
        )
    base = path.parent.resolve()
    splits = table[params.split_column].tolist() if params.split_column in table.columns else [""] * len(table)
    for given_raw, label_raw, split_raw in zip(
        table[params.path_column].tolist(), table[params.label_column].tolist(), splits
    ):
        given = _text(given_raw)
        label = label_text(label_raw)
        split = _text(split_raw).lower()
        if not given:
            skipped.append({"source_path": given, "reason": "missing", "detail": "empty path"})
            continue
        if not label:
            skipped.append({"source_path": given, "reason": "no_label", "detail": f"empty label ({label_raw!r})"})
            continue
        named = base / given
        file = Path(os.path.realpath(named))
        if not params.allow_outside_paths and not file.is_relative_to(base):
            skipped.append(
                {
                    "source_path": given,
                    "reason": "outside_source",
                    "detail": "path escapes the manifest's folder (set ingest.allow_outside_paths)",
                }
            )
            continue
        try:
            st = os.stat(file)
        except OSError as exc:
            if os.path.islink(named) or exc.errno == errno.ELOOP:
                skipped.append(
                    {"source_path": given, "reason": "broken_link", "detail": "dangling symlink or symlink loop"}
                )
            else:
                skipped.append({"source_path": given, "reason": "missing", "detail": "file not found"})
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append({"source_path": given, "reason": "not_regular", "detail": f"{_kind(st.st_mode)}, not read"})
        elif split not in ("", "train", "val", "test"):
            skipped.append(
                {"source_path": given, "reason": "bad_split", "detail": f"split {split!r} not train/val/test"}
            )
        else:
            yield Candidate(file, given, label, "source", split)


# --- feedback ------------------------------------------------------------------------------------


def _admit_feedback(
    policy: FeedbackPolicy,
    paths: Paths,
    store: _StoreWriter,
    rows: list[dict],
    previous: dict,
    cache: _HashCache,
    now: str,
    skipped: list[dict],
    review: list[dict],
    decided: dict[str, label_decisions.Decision],
) -> tuple[list[dict], int]:
    """Admitted feedback rows (origin "feedback"); conflicts go to `review` (or skipped), refusals to
    skipped. Trusted labels: this run's source + inbox rows and the earlier manifest's non-feedback rows.
    A review decision on the image (`decided`) wins: relabel X -> the image is X, exclude -> not admitted."""
    display = str(paths.feedback).rstrip("/")
    trusted: dict[str, dict[str, str]] = defaultdict(dict)  # image_id -> label -> a source_path with it
    for image_id, label, where in previous.get("trusted", ()):
        if image_id in decided and decided[image_id].decision != "keep":  # review: the earlier label is gone
            continue
        trusted[image_id].setdefault(label, where)
    for row in rows:
        trusted[row["image_id"]].setdefault(row["label"], row["source_path"])
    known = {row["label"] for row in rows}

    sidecars, orphans = list_sidecars(paths.feedback)
    for image in orphans:
        skipped.append(
            {
                "source_path": f"{display}/{image.name}",
                "reason": "bad_feedback",
                "detail": "no JSON sidecar (an upload in progress, or not written by imgcls serve)",
            }
        )
    by_image: dict[str, list[tuple[Submission, str, dict]]] = defaultdict(list)
    for sidecar in sidecars:
        try:
            sub = read_submission(sidecar)
        except FeedbackError as exc:
            skipped.append({"source_path": f"{display}/{sidecar.name}", "reason": "bad_feedback", "detail": str(exc)})
            continue
        shown = f"{display}/{sub.image.name}"
        sub.image = (
            Path(os.path.realpath(sub.image.parent)) / sub.image.name
        )  # one cache key however paths.feedback is spelt
        try:
            entry = cache.lookup(sub.image)
            if entry is None:
                entry, key = _describe_file(sub.image)
                cache.store(key, entry)
        except (_Unusable, OSError) as exc:
            reason, detail = (exc.reason, exc.detail) if isinstance(exc, _Unusable) else ("unreadable", _os_error(exc))
            skipped.append({"source_path": shown, "reason": reason, "detail": detail})
            continue
        if entry["image_id"] != sub.record.sha256:
            skipped.append(
                {
                    "source_path": shown,
                    "reason": "bad_feedback",
                    "detail": "image bytes do not match the sidecar's sha256",
                }
            )
            continue
        by_image[entry["image_id"]].append((sub, shown, entry))

    admitted, copied = [], 0
    for image_id in sorted(by_image):
        group = by_image[image_id]
        existing = trusted.get(image_id, {})
        # --- review decision on this image (tasks/common/label_decisions.py)
        decision = decided.get(image_id)
        if decision is not None and decision.decision == "exclude":
            for _, shown, _ in group:
                skipped.append(
                    {
                        "source_path": shown,
                        "reason": label_decisions.EXCLUDED_REASON,
                        "detail": label_decisions.describe(decision),
                    }
                )
            continue
        relabel = decision.label if decision is not None and decision.decision == "relabel" else None
        labels = {relabel or label_text(sub.record.label, table=False) for sub, _, _ in group}
        for sub, shown, entry in group:
            label = relabel or label_text(sub.record.label, table=False)
            others = sorted((set(existing) | labels) - {label})
            if label in existing:
                skipped.append(
                    {
                        "source_path": shown,
                        "reason": "duplicate",
                        "detail": f"already in the data as {existing[label]} with the same label",
                    }
                )
            elif others:
                where = next(iter(existing.values()), "")
                detail = (
                    f"already in the data as {where} labelled {', '.join(sorted(existing))}"
                    if existing
                    else f"the same image was sent as {', '.join(others)} too"
                )
                if policy.on_conflict == "review":
                    review.append(
                        {
                            "source_path": shown,
                            "image_id": image_id,
                            "label": label,
                            "conflicting_labels": ";".join(others),
                            "existing_source": where,
                            "received_at": sub.record.received_at,
                            "client_address": sub.record.client.address,
                            "token_id": sub.record.client.token_id,
                            "detail": detail,
                        }
                    )
                else:
                    skipped.append({"source_path": shown, "reason": "label_conflict", "detail": detail})
            elif label not in known and not policy.allow_new_classes:
                skipped.append(
                    {
                        "source_path": shown,
                        "reason": "unknown_label",
                        "detail": f"feedback label {label!r} is not a class of the data (ingest.feedback.allow_new_classes)",
                    }
                )
            else:
                try:
                    copied += store.copy_in(sub.image, entry)
                except (_Unusable, OSError) as exc:
                    reason, detail = (
                        (exc.reason, exc.detail) if isinstance(exc, _Unusable) else ("unreadable", _os_error(exc))
                    )
                    skipped.append({"source_path": shown, "reason": reason, "detail": detail})
                    continue
                admitted.append(
                    {
                        **entry,
                        "source_path": shown,
                        "label": label,
                        "original_label": label_text(sub.record.label, table=False),  # kept when decided
                        "ingested_at": previous.get("times", {}).get((shown, image_id), now),
                        "origin": "feedback",
                        "given_split": "",
                    }
                )
    return admitted, copied


# --- hashing, store ------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_regular(file: Path) -> Iterator[tuple]:
    """Open for reading without following a final symlink and without blocking on a FIFO, then make
    sure (fstat) that what was opened is a regular file: what was scanned may have been swapped."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(file, flags)
    except OSError as exc:
        raise _Unusable("unreadable", _os_error(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable("not_regular", f"{_kind(st.st_mode)}, not read")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh, st


def _describe_file(file: Path) -> tuple[dict, tuple]:
    """Hash and read the header only; an unreadable header is kept for clean to flag as corrupt.
    Also returns the cache key, from the fstat taken before reading (a file changed meanwhile gets
    a new mtime, so the next run hashes it again)."""
    with _open_regular(file) as (fh, st):
        digest, size = hashlib.sha256(), 0
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
        fh.seek(0)
        try:
            header = probe(fh)
            fmt, width, height, mode = header.format, header.width, header.height, header.mode
        except DecodeError:
            fmt, width, height, mode = "", 0, 0, ""
    entry = {
        "image_id": digest.hexdigest(),
        "bytes": size,
        "format": fmt,
        "width": width,
        "height": height,
        "mode": mode,
    }
    return entry, (str(file), st.st_size, st.st_mtime_ns)


class _HashCache:
    """Hash + header per file, keyed on (absolute path, size, mtime_ns): a re-run hashes only new or
    changed files."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[tuple, dict] = {}
        self.misses = 0
        if path.is_file():
            try:
                for rec in pd.read_parquet(path).to_dict("records"):
                    key = (rec.pop("file"), int(rec.pop("size")), int(rec.pop("mtime_ns")))
                    self.entries[key] = rec
            except Exception:  # a damaged cache only costs a re-hash
                self.entries = {}

    def lookup(self, file: Path) -> dict | None:
        st = os.lstat(file)  # candidates are resolved paths: no link to follow
        hit = self.entries.get((str(file), st.st_size, st.st_mtime_ns)) if stat.S_ISREG(st.st_mode) else None
        return dict(hit) if hit else None

    def store(self, key: tuple, entry: dict) -> None:
        self.misses += 1
        self.entries[key] = dict(entry)

    def save(self) -> None:
        records = [{"file": k[0], "size": k[1], "mtime_ns": k[2], **v} for k, v in self.entries.items()]
        write_parquet(pd.DataFrame(records), self.path)


class _StoreWriter:
    """ingest's side of the image store (tasks.common.store): copy a source file in unless the store
    holds it, and prune what the manifest no longer names. A local store is checked with a stat per
    file and written by temp + rename beside the target, as always; a remote one (s3://...) is listed
    once per run instead of asked once per image, and written by one upload of a verified local copy."""

    def __init__(self, location: str):
        self.store = ImageStore(location)
        self.remote_sizes = self.store.sizes() if self.store.remote else None

    def holds(self, image_id: str, size: int) -> bool:
        if self.remote_sizes is not None:
            return self.remote_sizes.get(image_id) == size
        target = self.store.path(image_id)
        return target.is_file() and target.stat().st_size == size

    def copy_in(self, file: Path, entry: dict) -> int:
        """Copy unless the store has it; the copy is hashed as it is written and must be the image_id."""
        image_id = entry["image_id"]
        if self.holds(image_id, entry["bytes"]):
            return 0
        if self.remote_sizes is None:
            with atomic_path(self.store.path(image_id), suffix=".part") as tmp:
                _copy_verified(file, tmp, image_id)
            return 1
        with tempfile.TemporaryDirectory(prefix="imgcls-ingest-") as folder:
            tmp = Path(folder) / image_id
            _copy_verified(file, tmp, image_id)
            self.store.write(image_id, tmp)  # one PUT: the object appears whole or not at all
        self.remote_sizes[image_id] = entry["bytes"]
        return 1

    def prune(self, keep: set[str]) -> int:
        """The store mirrors the manifest (so its DVC hash is the dataset's); the user's source is untouched."""
        if self.remote_sizes is not None:
            return self.store.delete(sorted(set(self.remote_sizes) - keep))
        removed, root = 0, Path(self.store.root)
        if root.is_dir():
            for obj in root.glob("*/*"):  # leftovers of an interrupted copy go too
                if obj.is_file() and obj.name not in keep:
                    obj.unlink()
                    removed += 1
        return removed


def _copy_verified(file: Path, tmp: Path, image_id: str) -> None:
    with _open_regular(file) as (fh, _):
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            while block := fh.read(1 << 20):
                digest.update(block)
                out.write(block)
    if digest.hexdigest() != image_id:
        raise _Unusable("unreadable", "file changed while it was read (run ingest again)")


def _previous_manifest(path: Path) -> dict:
    """From the last ingested manifest: first-seen times, and the (image_id, label, source_path) of its
    non-feedback rows (what the store held: feedback may not contradict it either)."""
    if not path.is_file():
        return {}
    old = pd.read_parquet(path)
    times = {
        (r.source_path, r.image_id): r.ingested_at
        for r in old[["source_path", "image_id", "ingested_at"]].itertuples(index=False)
    }
    if "origin" in old.columns:
        old = old[old["origin"] != "feedback"]
    trusted = [
        (r.image_id, str(r.label), r.source_path)
        for r in old[["image_id", "label", "source_path"]].itertuples(index=False)
    ]
    return {"times": times, "trusted": trusted}


def _write_reports(out_dir: Path, manifest: pd.DataFrame, skipped: list[dict], review: list[dict]) -> None:
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    write_csv(skipped_df, out_dir / "skipped.csv")
    write_csv(pd.DataFrame(review, columns=REVIEW_COLUMNS), out_dir / "feedback_review.csv")
    lines = [
        f"# ingest: {len(manifest)} images in {manifest['label'].nunique()} classes, {len(skipped_df)} files skipped",
        "",
    ]
    admitted = int((manifest["origin"] == "feedback").sum())
    if admitted or review:
        lines += [f"feedback: {admitted} admitted, {len(review)} sent to review (feedback_review.csv)", ""]
    if len(skipped_df):
        lines += ["| skipped because | files |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in skipped_df["reason"].value_counts().sort_index().items()]
        lines.append("")
    lines += ["| class | images |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in manifest["label"].value_counts().sort_index().items()]
    write_text("\n".join(lines) + "\n", out_dir / "summary.md")


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
