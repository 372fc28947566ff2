"""Human label decisions (`imgcls review`): the one owner of the decisions file (paths.label_decisions,
data/label_decisions.csv by default: under data/, git-versioned and a DVC dependency of ingest).

The file is an append-only history, one row per decision:

    sha256, decision, label, note, user, decided_at, via

- decision: keep (the given label is right), relabel (the image's label becomes `label`), exclude
  (leave the image out of the data);
- the latest row for a sha256 (in file order) is the one in force; earlier rows stay as the record of who
  changed their mind when;
- via: where the decision came from (cli, csv, label-studio).

Ingest applies the decisions on every run (apply_decisions): a relabelled row gets the new label and keeps
the source's one in `original_label`, an excluded row goes to reports/ingest/skipped.csv as
`excluded_by_review`, and every decided row records its decision in `review_decision`, which validate
reads (human_checked) so that an image a person has checked is never flagged suspect_label again."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.atomic import write_csv
from tasks.common.errors import UserError

DECISIONS = ("keep", "relabel", "exclude")
COLUMNS = ["sha256", "decision", "label", "note", "user", "decided_at", "via"]
# what ingest adds to the manifest when a decisions file exists (the source's label; the decision in force)
MANIFEST_COLUMNS = ["original_label", "review_decision"]
EXCLUDED_REASON = "excluded_by_review"  # reports/ingest/skipped.csv
USER_ENV = "IMGCLS_USER"
MAX_NOTE_CHARS = 500
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Decision:
    sha256: str
    decision: str
    label: str = ""
    note: str = ""
    user: str = ""
    decided_at: str = ""
    via: str = "cli"


def current_user() -> str:
    """Who decides: $IMGCLS_USER, else the login name."""
    if os.environ.get(USER_ENV, "").strip():
        return os.environ[USER_ENV].strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def make_decision(
    sha256: str, decision: str, label: str = "", note: str = "", user: str | None = None, via: str = "cli"
) -> Decision:
    """A checked decision (shape only; labels are checked against the classes by check_labels)."""
    sha = str(sha256).strip().lower()
    if not _SHA.fullmatch(sha):
        raise UserError(f"{sha256!r} is not a SHA-256 (64 hex characters)")
    decision = str(decision).strip().lower()
    if decision not in DECISIONS:
        raise UserError(f"{sha[:12]}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
    label = str(label or "").strip()
    if decision == "relabel" and not label:
        raise UserError(f"{sha[:12]}: relabel needs the new label")
    if decision != "relabel":
        label = ""
    note = " ".join(str(note or "").split())
    if len(note) > MAX_NOTE_CHARS:
        raise UserError(f"{sha[:12]}: note longer than {MAX_NOTE_CHARS} characters")
    return Decision(
        sha256=sha,
        decision=decision,
        label=label,
        note=note,
        user=user if user is not None else current_user(),
        decided_at=datetime.now(UTC).isoformat(timespec="seconds"),
        via=via,
    )


def check_labels(decisions: Iterable[Decision], classes: Iterable[str]) -> None:
    """A relabel must name a known class: one line naming the first that does not."""
    known = sorted(set(classes))
    for d in decisions:
        if d.decision == "relabel" and d.label not in known:
            shown = ", ".join(known[:20]) + (f", ... {len(known) - 20} more" if len(known) > 20 else "")
            raise UserError(
                f"{d.sha256[:12]}: unknown label {d.label!r} (known classes: {shown or 'none'}); "
                "list new classes in validate.classes first"
            )


# --- the file ----------------------------------------------------------------------------------------


def read_history(path: str | Path) -> pd.DataFrame:
    """Every decision ever recorded, in file order; an empty frame when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=COLUMNS)
    except Exception as exc:  # pandas raises many types for a broken table
        raise UserError(f"{path}: cannot read label decisions ({type(exc).__name__}: {str(exc)[:120]})") from None
    missing = [c for c in ("sha256", "decision", "label") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = ""
    table = table[COLUMNS].astype(str)
    for line, row in enumerate(table.itertuples(index=False), start=2):
        if (
            not _SHA.fullmatch(row.sha256)
            or row.decision not in DECISIONS
            or (row.decision == "relabel") != bool(row.label)
        ):
            raise UserError(
                f"{path} line {line}: not a decision (sha256 {row.sha256[:16]!r}, decision {row.decision!r}, "
                f"label {row.label!r}); fix or remove the line"
            )
    return table


def latest(history: pd.DataFrame) -> dict[str, Decision]:
    """The decision in force per sha256: the last one recorded."""
    return {row["sha256"]: Decision(**row) for row in history.to_dict("records")}


def load_latest(path: str | Path) -> dict[str, Decision]:
    return latest(read_history(path))


@contextlib.contextmanager
def _locked(lock_dir: str | Path) -> Iterator[None]:
    """Two `imgcls review` commands appending at once must not lose one's rows."""
    lock = Path(lock_dir) / "label_decisions.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append(path: str | Path, decisions: list[Decision], lock_dir: str | Path) -> int:
    """Add decisions to the history (the whole file rewritten atomically); returns how many were added."""
    if not decisions:
        return 0
    with _locked(lock_dir):
        history = read_history(path)
        new = pd.DataFrame([asdict(d) for d in decisions], columns=COLUMNS)
        write_csv(pd.concat([history, new], ignore_index=True) if len(history) else new, path)
    return len(decisions)


def resolve(sha_or_prefix: str, known: Iterable[str]) -> str:
    """A full SHA-256 from a unique prefix (at least 8 characters) of a known image."""
    text = str(sha_or_prefix).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", text):
        raise UserError(f"{sha_or_prefix!r} is not a SHA-256 or a prefix of one (8 to 64 hex characters)")
    hits = sorted({k for k in known if k.startswith(text)})
    if not hits:
        raise UserError(f"{text[:16]}: no image with this SHA-256 in the data, its reports or the decisions")
    if len(hits) > 1:
        raise UserError(f"{text}: prefix of {len(hits)} images ({', '.join(h[:16] for h in hits[:3])}, ...)")
    return hits[0]


# --- ingest and validate -----------------------------------------------------------------------------


def load_for_ingest(path: str | Path) -> dict[str, Decision] | None:
    """The decisions in force, or None when there is no decisions file (ingest then adds no columns)."""
    return load_latest(path) if Path(path).is_file() else None


def apply_decisions(rows: list[dict], decided: dict[str, Decision] | None) -> tuple[list[dict], list[dict]]:
    """Ingest's review step on its row dicts (image_id, source_path, label, ...): (kept rows, skipped.csv
    entries). relabel -> label becomes the decision's, the source's stays in original_label; exclude -> the
    row is left out as excluded_by_review; every row gets original_label and review_decision ("" when
    undecided; also with no decisions file, `decided` None). Idempotent: a row already carrying
    original_label keeps it."""
    kept, skipped = [], []
    for row in rows:
        decision = decided.get(row["image_id"]) if decided else None
        row.setdefault("original_label", row["label"])
        if decision is not None and decision.decision == "exclude":
            skipped.append({"source_path": row["source_path"], "reason": EXCLUDED_REASON, "detail": describe(decision)})
            continue
        if decision is not None and decision.decision == "relabel":
            row["label"] = decision.label
        row["review_decision"] = decision.decision if decision is not None else ""
        kept.append(row)
    return kept, skipped


def describe(decision: Decision) -> str:
    what = f"relabel to {decision.label!r}" if decision.decision == "relabel" else decision.decision
    note = f": {decision.note}" if decision.note else ""
    return f"{what} by {decision.user or 'unknown'} at {decision.decided_at or '?'}{note}"


def human_checked(frame: pd.DataFrame, fallback_manifest: str | Path | None = None) -> np.ndarray:
    """Per row of `frame` (image_id, ...): has a person kept or relabelled this image? Read from the
    manifest's review_decision column; a manifest without it (a stage that did not carry the column on)
    takes it from `fallback_manifest` (ingest's, by image_id)."""
    if "review_decision" in frame.columns:
        decision = frame["review_decision"].fillna("").astype(str)
    elif fallback_manifest is not None and Path(fallback_manifest).is_file():
        try:
            source = pd.read_parquet(fallback_manifest, columns=["image_id", "review_decision"])
        except Exception:  # no such column: nothing was decided when ingest ran
            return np.zeros(len(frame), dtype=bool)
        by_id = source.drop_duplicates("image_id", keep="last").set_index("image_id")["review_decision"]
        decision = frame["image_id"].map(by_id).fillna("").astype(str)
    else:
        return np.zeros(len(frame), dtype=bool)
    return decision.isin(["keep", "relabel"]).to_numpy()
