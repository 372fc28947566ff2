"""ingest: source (folder | csv/parquet manifest | sample:digits) + inbox -> content-addressed store
and the ingested manifest. Nothing is decoded here (clean does that); files that are not images at
all, hidden files and unusable manifest rows are listed in reports/ingest/skipped.csv."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tasks.common.atomic import atomic_path, write_csv, write_parquet, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.images import DecodeError, is_image_name, probe, sha256_file
from tasks.common.manifest import INGESTED_COLUMNS, store_path
from tasks.common.params import Paths, Strict
from tasks.common.sample import SAMPLE_PREFIX, materialize_sample

log = logging.getLogger(__name__)
SKIPPED_COLUMNS = ["source_path", "reason", "detail"]


class Params(Strict):
    source: str = "sample:digits"
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"
    allow_outside_paths: bool = False
    sample_upscale: int = 4


@dataclass
class Candidate:
    """One file to ingest: where it is on disk and how the user named it."""

    file: Path
    source_path: str
    label: str
    origin: str
    given_split: str = ""


def run(params: Params, paths: Paths) -> dict:
    skipped: list[dict] = []
    candidates = list(_source_candidates(params, paths, skipped))
    inbox = Path(paths.inbox)
    if inbox.is_dir():
        candidates += list(_folder_candidates(inbox, "inbox", skipped, display_prefix=str(inbox)))
    if not candidates:
        raise UserError(f"no images found in source {params.source!r} or inbox {paths.inbox!r}")

    cache = _HashCache(Path(paths.cache) / "ingest_hashes.parquet")
    previous = _previous_ingest_times(Path(paths.ingested))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows, copied = [], 0
    for cand in tqdm(candidates, desc="ingest", unit="img", disable=None):
        entry = cache.lookup(cand.file)
        if entry is None:
            entry = _describe_file(cand.file)
            cache.store(cand.file, entry)
        copied += _copy_into_store(cand.file, store_path(paths.store, entry["image_id"]))
        rows.append({
            **entry,
            "source_path": cand.source_path,
            "label": cand.label,
            "ingested_at": previous.get((cand.source_path, entry["image_id"]), now),
            "origin": cand.origin,
            "given_split": cand.given_split,
        })
    manifest = pd.DataFrame(rows, columns=INGESTED_COLUMNS).sort_values("source_path", kind="stable")
    manifest = manifest.reset_index(drop=True)
    cache.save()
    pruned = _prune_store(Path(paths.store), set(manifest["image_id"]))
    write_parquet(manifest, paths.ingested)
    _write_reports(paths.report_dir("ingest"), manifest, skipped)
    return {
        "images": len(manifest),
        "unique_files": int(manifest["image_id"].nunique()),
        "classes": int(manifest["label"].nunique()),
        "hashed": cache.misses,
        "copied": copied,
        "pruned_from_store": pruned,
        "skipped": len(skipped),
        "from_inbox": int((manifest["origin"] == "inbox").sum()),
    }


# --- sources -------------------------------------------------------------------------------------

def _source_candidates(params: Params, paths: Paths, skipped: list[dict]):
    source = params.source
    if source.startswith(SAMPLE_PREFIX):
        root = materialize_sample(source, Path(paths.cache) / "samples", params.sample_upscale)
        return _folder_candidates(root, "source", skipped, display_prefix=source)
    path = Path(source)
    if path.is_dir():
        return _folder_candidates(path, "source", skipped)
    if path.is_file() and path.suffix.lower() in (".csv", ".parquet"):
        return _manifest_candidates(path, params, skipped)
    if not path.exists():
        raise UserError(f"ingest.source: {source!r} does not exist (a folder, a .csv/.parquet manifest or sample:digits)")
    raise UserError(f"ingest.source: {source!r} is neither a folder nor a .csv/.parquet manifest")


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _folder_candidates(root: Path, origin: str, skipped: list[dict], display_prefix: str | None = None):
    """Class-subfolder layout: root/<label>/**/<file>. A nested folder inside a class folder still
    belongs to that class; files directly under root have no label."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            rel = file.relative_to(root)
            shown = f"{display_prefix}/{rel.as_posix()}" if display_prefix else rel.as_posix()
            if _is_hidden(rel):
                skipped.append({"source_path": shown, "reason": "hidden", "detail": "hidden file or folder"})
            elif len(rel.parts) < 2:
                skipped.append({"source_path": shown, "reason": "no_label", "detail": "not inside a class folder"})
            elif not is_image_name(name):
                skipped.append({"source_path": shown, "reason": "not_image", "detail": f"extension {file.suffix or '(none)'!r}"})
            else:
                yield Candidate(file, shown, rel.parts[0].strip(), origin)


def _read_manifest_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a broken table
        raise UserError(f"{path}: cannot read manifest ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def _manifest_candidates(path: Path, params: Params, skipped: list[dict]):
    table = _read_manifest_table(path)
    missing = [c for c in (params.path_column, params.label_column) if c not in table.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(map(str, table.columns))}); "
            "set ingest.path_column / ingest.label_column"
        )
    base = path.parent.resolve()
    has_split = params.split_column in table.columns
    for row in table.itertuples(index=False):
        record = row._asdict() if hasattr(row, "_asdict") else dict(zip(table.columns, row))
        given = str(record.get(params.path_column, "") or "")
        label = str(record.get(params.label_column, "") or "").strip()
        split = str(record.get(params.split_column, "") or "").strip().lower() if has_split else ""
        file = (base / given).resolve()
        if not given:
            skipped.append({"source_path": given, "reason": "missing", "detail": "empty path"})
        elif not label:
            skipped.append({"source_path": given, "reason": "no_label", "detail": "empty label"})
        elif not params.allow_outside_paths and not file.is_relative_to(base):
            skipped.append({"source_path": given, "reason": "outside_source",
                            "detail": "path escapes the manifest's folder (set ingest.allow_outside_paths)"})
        elif not file.is_file():
            skipped.append({"source_path": given, "reason": "missing", "detail": "file not found"})
        elif split not in ("", "train", "val", "test"):
            skipped.append({"source_path": given, "reason": "bad_split", "detail": f"split {split!r} not train/val/test"})
        else:
            yield Candidate(file, given, label, "source", split)


# --- hashing, store ------------------------------------------------------------------------------

def _describe_file(file: Path) -> dict:
    """Hash and read the header only; an unreadable header is kept for clean to flag as corrupt."""
    try:
        header = probe(file)
        fmt, width, height, mode = header.format, header.width, header.height, header.mode
    except DecodeError:
        fmt, width, height, mode = "", 0, 0, ""
    return {"image_id": sha256_file(file), "bytes": file.stat().st_size, "format": fmt,
            "width": width, "height": height, "mode": mode}


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

    @staticmethod
    def _key(file: Path) -> tuple:
        st = file.stat()
        return (str(file.resolve()), st.st_size, st.st_mtime_ns)

    def lookup(self, file: Path) -> dict | None:
        hit = self.entries.get(self._key(file))
        return dict(hit) if hit else None

    def store(self, file: Path, entry: dict) -> None:
        self.misses += 1
        self.entries[self._key(file)] = dict(entry)

    def save(self) -> None:
        records = [{"file": k[0], "size": k[1], "mtime_ns": k[2], **v} for k, v in self.entries.items()]
        write_parquet(pd.DataFrame(records), self.path)


def _copy_into_store(file: Path, target: Path) -> int:
    if target.is_file() and target.stat().st_size == file.stat().st_size:
        return 0
    with atomic_path(target, suffix=".part") as tmp:
        shutil.copyfile(file, tmp)
    return 1


def _prune_store(store: Path, keep: set[str]) -> int:
    """The store mirrors the manifest (so its DVC hash is the dataset's); the user's source is untouched."""
    removed = 0
    if store.is_dir():
        for obj in store.glob("*/*"):
            if obj.is_file() and obj.name not in keep:
                obj.unlink()
                removed += 1
    return removed


def _previous_ingest_times(path: Path) -> dict[tuple[str, str], str]:
    if not path.is_file():
        return {}
    old = pd.read_parquet(path, columns=["source_path", "image_id", "ingested_at"])
    return {(r.source_path, r.image_id): r.ingested_at for r in old.itertuples(index=False)}


def _write_reports(out_dir: Path, manifest: pd.DataFrame, skipped: list[dict]) -> None:
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    write_csv(skipped_df, out_dir / "skipped.csv")
    lines = [f"# ingest: {len(manifest)} images in {manifest['label'].nunique()} classes, {len(skipped_df)} files skipped", ""]
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
