"""What awaits a person (`imgcls review`): the review queue built from the latest reports, its contact
sheet, and the Label Studio interchange. Pure functions over files the stages wrote; the decisions file
itself belongs to tasks.common.label_decisions.

Queue reasons (one row per image, the first that applies in this order):
- label_conflict:           clean found the same pixels under different labels (reports/clean/flagged.csv)
- near_duplicate_conflict:  clean found a near-identical picture under another label (the suggestion)
- feedback_conflict:        server feedback contradicting the data (reports/ingest/feedback_review.csv, or
                            the feedback copy clean set aside)
- suspect_label:            validate's confident learning (reports/validate/flagged.csv): the out-of-fold
                            models' label and its probability are the suggestion
- feedback_low_confidence:  admitted feedback whose label the out-of-fold models give less than a threshold
                            (data/manifests/validated.parquet, given_probability)
- uncertain_unlabelled:     `imgcls review group`'s picks (reports/review/unlabelled/next_to_label.csv)
- unlabelled_group:         every other image it grouped, its group's proposal suggested (groups.csv)"""

from __future__ import annotations

import ast
import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from tasks.common.errors import UserError
from tasks.common.label_decisions import DECISIONS
from tasks.common.params import Paths
from tasks.common.store import ImageStore, open_location

REASONS = (
    "label_conflict",
    "near_duplicate_conflict",
    "feedback_conflict",
    "suspect_label",
    "feedback_low_confidence",
    "uncertain_unlabelled",  # `imgcls review group`: the next images worth labelling (smallest margin)
    "unlabelled_group",  # `imgcls review group`: an unlabelled image, its group's proposed label suggested
)
QUEUE_COLUMNS = [
    "sha256",
    "store_path",
    "source_path",
    "given_label",  # ";"-joined when copies of the image carry different labels
    "given_probability",  # out-of-fold probability of the given label (validate), when known
    "suggested_label",
    "confidence",  # probability of the suggested label, when a model suggested it
    "reason",
    "detail",
    "decision",  # left empty for a person to fill in (keep | relabel | exclude), then `imgcls review apply-csv`
    "label",  # relabel: the new label (empty: the suggested one)
    "note",
]
EXCLUDE_CHOICE = "(exclude)"  # the Label Studio choice that means "leave the image out"
FROM_NAME, TO_NAME = "choice", "image"  # the <Choices name> and <Image name> of labeling_config()
_LOOKS_LIKE = re.compile(
    r"labelled (?P<given>.+) \(p=(?P<gp>[0-9.eE+-]+)\), looks like (?P<s>.+) \(p=(?P<sp>[0-9.eE+-]+)\)$"
)
_BITS_FROM = re.compile(r"^\d+ bits from (?P<rest>.+)$")
_SHA = re.compile(r"[0-9a-f]{64}")


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return None
    except Exception as exc:  # a damaged report: one line, not a traceback
        raise UserError(
            f"{path}: cannot read ({type(exc).__name__}: {str(exc)[:120]}); run the pipeline again"
        ) from None


def _repr_text(text: str) -> str:
    """validate writes labels with !r: 'cat' -> cat (anything else is taken as it is)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else text


def parse_suspect_detail(detail: str) -> tuple[str, float, float]:
    """validate's suspect_label detail -> (suggested label, its probability, given label's probability);
    ("", nan, nan) when the text is not in that form."""
    match = _LOOKS_LIKE.search(str(detail))
    if not match:
        return "", math.nan, math.nan
    return _repr_text(match["s"]), float(match["sp"]), float(match["gp"])


def _row(image_id: str, source: str, label: str, reason: str, detail: str, **more) -> dict:
    return {
        "sha256": image_id,
        "source_path": source,
        "given_label": label,
        "reason": reason,
        "detail": detail,
        "given_probability": more.get("given_probability", math.nan),
        "suggested_label": more.get("suggested_label", ""),
        "confidence": more.get("confidence", math.nan),
    }


def _clean_rows(flagged: pd.DataFrame) -> list[dict]:
    rows = []
    for r in flagged[flagged["reason"] == "label_conflict"].itertuples(index=False):
        detail = str(r.detail)
        if detail.startswith("feedback: ") and " labelled " in detail:
            suggested = detail.rsplit(" labelled ", 1)[1]
            rows.append(
                _row(r.image_id, r.source_path, r.label, "feedback_conflict", detail, suggested_label=suggested)
            )
        elif _BITS_FROM.match(detail) and " labelled " in detail:
            suggested = detail.rsplit(" labelled ", 1)[1]
            rows.append(
                _row(r.image_id, r.source_path, r.label, "near_duplicate_conflict", detail, suggested_label=suggested)
            )
        else:  # same pixels under several labels: "...; labels a, b"
            labels = detail.rsplit("labels ", 1)[1].split(", ") if "labels " in detail else []
            others = [lab for lab in labels if lab != str(r.label)]
            rows.append(
                _row(
                    r.image_id,
                    r.source_path,
                    r.label,
                    "label_conflict",
                    detail,
                    suggested_label=others[0] if len(others) == 1 else "",
                )
            )
    return rows


def _validate_rows(flagged: pd.DataFrame) -> list[dict]:
    rows = []
    for r in flagged[flagged["reason"] == "suspect_label"].itertuples(index=False):
        suggested, confidence, given_p = parse_suspect_detail(r.detail)
        rows.append(
            _row(
                r.image_id,
                r.source_path,
                r.label,
                "suspect_label",
                r.detail,
                suggested_label=suggested,
                confidence=confidence,
                given_probability=given_p,
            )
        )
    return rows


def _feedback_review_rows(review: pd.DataFrame) -> list[dict]:
    rows = []
    for r in review.itertuples(index=False):
        others = [lab for lab in str(r.conflicting_labels).split(";") if lab]
        rows.append(
            _row(
                r.image_id,
                r.source_path,
                r.label,
                "feedback_conflict",
                r.detail,
                suggested_label=others[0] if len(others) == 1 else "",
            )
        )
    return rows


def _low_confidence_feedback(validated: Path, threshold: float) -> list[dict]:
    if threshold <= 0 or not validated.is_file():
        return []
    frame = pd.read_parquet(validated)
    if not {"origin", "given_probability", "image_id"} <= set(frame.columns):
        return []
    suspect = frame["suspect_label"].astype(bool) if "suspect_label" in frame.columns else False
    low = frame[(frame["origin"] == "feedback") & (frame["given_probability"] < threshold) & ~suspect]
    return [
        _row(
            r.image_id,
            r.source_path,
            str(r.label),
            "feedback_low_confidence",
            f"feedback label {str(r.label)!r} gets p={r.given_probability:.2f} from the out-of-fold models "
            f"(below {threshold:g})",
            given_probability=float(r.given_probability),
        )
        for r in low.itertuples(index=False)
    ]


def _unlabelled_rows(paths: Paths) -> list[dict]:
    """The unlabelled images `imgcls review group` wrote (tasks/labelling): the picked ones first, then
    every grouped one with its group's proposal. They are not in the store: store_path is the file."""
    from tasks.labelling.reports import GROUPS_CSV, NEXT_CSV, UNLABELLED_DIR

    folder = paths.report_dir("review") / UNLABELLED_DIR
    groups, picked = _read_csv(folder / GROUPS_CSV), _read_csv(folder / NEXT_CSV)
    rows = []
    for r in (picked if picked is not None else pd.DataFrame()).itertuples(index=False):
        detail = f"margin {float(r.margin):.3f} between {r.predicted} and {r.runner_up} (rank {r.rank})"
        rows.append(_row(r.sha256, r.path, "", "uncertain_unlabelled", detail, suggested_label=r.predicted))
        rows[-1]["store_path"] = r.path
    for r in (groups if groups is not None else pd.DataFrame()).itertuples(index=False):
        if r.error or not r.sha256:
            continue
        conf = float(r.confidence) if r.confidence else math.nan
        detail = f"group {r.group}" + (f": proposed {r.proposed_label} ({conf:.2f} agree)" if r.proposed_label else "")
        rows.append(
            _row(r.sha256, r.path, "", "unlabelled_group", detail, suggested_label=r.proposed_label, confidence=conf)
        )
        rows[-1]["store_path"] = r.path
    return rows


def build_queue(paths: Paths, decided: Iterable[str], feedback_min_confidence: float = 0.5) -> pd.DataFrame:
    """One row per image awaiting a person (QUEUE_COLUMNS), from the latest reports; images with a
    decision (`decided`: sha256s) are left out. Raises UserError when no stage has reported yet."""
    clean = _read_csv(paths.report_dir("clean") / "flagged.csv")
    validate = _read_csv(paths.report_dir("validate") / "flagged.csv")
    review = _read_csv(paths.report_dir("ingest") / "feedback_review.csv")
    unlabelled = _unlabelled_rows(paths)
    if clean is None and validate is None and review is None and not unlabelled:
        raise UserError(
            f"nothing to review yet: no reports under {paths.reports}/ (run the pipeline: imgcls run or dvc repro)"
        )
    rows: list[dict] = []
    if clean is not None:
        rows += _clean_rows(clean)
    if review is not None:
        rows += _feedback_review_rows(review)
    if validate is not None:
        rows += _validate_rows(validate)
    rows += _low_confidence_feedback(Path(paths.validated), feedback_min_confidence)
    rows += unlabelled
    decided = set(decided)
    rows = [r for r in rows if r["sha256"] not in decided]
    if not rows:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    frame = pd.DataFrame(rows)
    frame["_rank"] = frame["reason"].map(REASONS.index)
    frame = frame.sort_values(["_rank", "source_path"], kind="stable")
    out = []
    images = ImageStore(paths.store)
    for sha, group in frame.groupby("sha256", sort=False):  # one row per image, its first reason
        first = group.iloc[0]
        given = sorted(set(group["given_label"].astype(str)))
        # one file under several labels: any of them is as good a suggestion as the other
        suggested = next((s for s in group["suggested_label"] if s), "") if len(given) == 1 else ""
        with_conf = group[group["suggested_label"] == suggested]["confidence"].dropna()
        out.append(
            {
                "sha256": sha,
                # a local path, or a URL (s3://...); an unlabelled image's own file
                "store_path": own if isinstance(own := first.get("store_path"), str) else images.location_of(sha),
                "source_path": first["source_path"],
                "given_label": ";".join(given),
                "given_probability": group["given_probability"].dropna().min()
                if group["given_probability"].notna().any()
                else math.nan,
                "suggested_label": suggested,
                "confidence": with_conf.iloc[0] if suggested and len(with_conf) else math.nan,
                "reason": first["reason"],
                "detail": " | ".join(dict.fromkeys(group["detail"].astype(str))),
                "decision": "",
                "label": "",
                "note": "",
                "_rank": first["_rank"],
            }
        )
    queue = pd.DataFrame(out).sort_values(["_rank", "confidence", "source_path"], ascending=[True, False, True])
    return queue.drop(columns="_rank").reset_index(drop=True)[QUEUE_COLUMNS]


# --- apply-csv --------------------------------------------------------------------------------------


def decisions_from_table(table: pd.DataFrame, where: str) -> list[tuple[str, str, str, str]]:
    """(sha256, decision, label, note) from a table with sha256, decision, label (and optionally note,
    suggested_label) columns, such as queue.csv filled in; rows without a decision are skipped. A relabel
    without a label takes the row's suggested_label."""
    missing = [c for c in ("sha256", "decision") if c not in table.columns]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)} (needs sha256, decision, label)")
    out = []
    for line, row in enumerate(table.fillna("").astype(str).to_dict("records"), start=2):
        decision = row["decision"].strip().lower()
        if not decision:
            continue
        if decision not in DECISIONS:
            raise UserError(f"{where} line {line}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
        label = row.get("label", "").strip()
        if decision == "relabel" and not label:
            label = row.get("suggested_label", "").strip()
            if not label:
                raise UserError(f"{where} line {line}: relabel without a label (and no suggested_label)")
        out.append((row["sha256"].strip().lower(), decision, label, row.get("note", "").strip()))
    return out


# --- contact sheet ----------------------------------------------------------------------------------


def _thumbnail(location: str, size: int) -> str | None:
    """A base64 PNG of the stored image, at most size x size; None when it does not decode."""
    from tasks.common.images import DecodeError, decode

    try:
        img = decode(open_location(location), max_pixels=4096 * 4096).convert("RGB")
    except (DecodeError, OSError, ValueError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def contact_sheet_html(queue: pd.DataFrame, limit: int = 600, thumb: int = 96) -> str:
    """A self-contained page (thumbnails inline as base64): one section per reason, each image with its
    given and suggested label and the command that decides it."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>imgcls review queue</title><style>",
        "body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:8px}",
        ".card{width:150px;border:1px solid #ccc;padding:4px;font-size:11px;word-break:break-all}",
        f".card img{{width:{thumb}px;height:{thumb}px;object-fit:contain;image-rendering:pixelated;background:#eee}}",
        ".given{color:#a00}.suggested{color:#070}.sha{color:#666;font-family:monospace}</style></head><body>",
        f"<h1>Review queue: {len(queue)} image(s)</h1>",
        "<p>Decide with <code>imgcls review decide SHA --keep | --relabel LABEL | --exclude</code>, or fill in "
        "the decision / label columns of queue.csv and run <code>imgcls review apply-csv queue.csv</code>.</p>",
    ]
    shown = 0
    for reason in REASONS:
        group = queue[queue["reason"] == reason]
        if group.empty:
            continue
        parts.append(f"<h2>{esc(reason)} ({len(group)})</h2><div class='grid'>")
        for row in group.itertuples(index=False):
            if shown >= limit:
                break
            shown += 1
            data = _thumbnail(row.store_path, thumb)
            img = (
                f"<img alt='' src='data:image/png;base64,{data}'>"
                if data
                else f"<div style='width:{thumb}px;height:{thumb}px;background:#fdd'>not in the store</div>"
            )
            conf = (
                f" (p={row.confidence:.2f})"
                if isinstance(row.confidence, float) and not math.isnan(row.confidence)
                else ""
            )
            suggested = (
                f"<div class='suggested'>suggested: {esc(str(row.suggested_label))}{conf}</div>"
                if row.suggested_label
                else ""
            )
            parts.append(
                f"<div class='card' title='{esc(str(row.detail))}'>{img}"
                f"<div class='given'>given: {esc(str(row.given_label))}</div>{suggested}"
                f"<div>{esc(str(row.source_path))}</div><div class='sha'>{esc(row.sha256[:16])}</div></div>"
            )
        parts.append("</div>")
    if shown < len(queue):
        parts.append(f"<p>{len(queue) - shown} more in queue.csv (the page shows the first {limit}).</p>")
    if queue.empty:
        parts.append("<p>Nothing awaits review.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- Label Studio -----------------------------------------------------------------------------------


def labeling_config(classes: Iterable[str]) -> str:
    """The Label Studio labeling interface the exported tasks fit: one image, one single choice among the
    classes and EXCLUDE_CHOICE."""
    choices = "\n".join(
        f'    <Choice value="{html.escape(c, quote=True)}"/>' for c in [*sorted(classes), EXCLUDE_CHOICE]
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image"/>\n'
        '  <Text name="detail" value="$detail"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def to_label_studio(queue: pd.DataFrame, image_url: Callable[[str], str], model_version: str) -> list[dict]:
    """Label Studio tasks ({"data": ..., "predictions": [...]}) for the queue; the suggested label (or, with
    none, the given one) is the pre-annotation, with its probability as the score when known."""
    tasks = []
    for row in queue.itertuples(index=False):
        pre = row.suggested_label or (row.given_label if ";" not in str(row.given_label) else "")
        task = {
            "data": {
                "image": image_url(row.store_path),
                "sha256": row.sha256,
                "given_label": str(row.given_label),
                "reason": row.reason,
                "detail": str(row.detail),
                "source_path": str(row.source_path),
            }
        }
        if pre:
            prediction = {
                "model_version": model_version,
                "result": [
                    {
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "choices",
                        "value": {"choices": [str(pre)]},
                    }
                ],
            }
            if row.suggested_label and isinstance(row.confidence, float) and not math.isnan(row.confidence):
                prediction["score"] = round(float(row.confidence), 4)
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks


def _task_sha(task: dict) -> str:
    data = task.get("data") if isinstance(task.get("data"), dict) else task
    sha = str(data.get("sha256", "")).lower()
    if _SHA.fullmatch(sha):
        return sha
    found = _SHA.findall(str(data.get("image", "")).lower())
    return found[-1] if found else ""


def _annotation_choice(task: dict) -> tuple[str, str] | None:
    """(choice, who) of the task's latest completed annotation; None when it has none."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        if isinstance(task.get(FROM_NAME), str):  # Label Studio's JSON-MIN export: {"image":..., "choice": "x"}
            return task[FROM_NAME], str(task.get("annotator", ""))
        return None
    order = sorted(
        range(len(annotations)),
        key=lambda i: (str(annotations[i].get("updated_at") or annotations[i].get("created_at") or ""), i),
    )
    latest = annotations[order[-1]]
    for result in latest.get("result") or []:
        if isinstance(result, dict) and result.get("type") == "choices":
            choices = (result.get("value") or {}).get("choices") or []
            if choices:
                who = latest.get("completed_by")
                who = who.get("email", "") if isinstance(who, dict) else str(who or "")
                return str(choices[0]), who
    return None


def from_label_studio(tasks: object, where: str) -> tuple[list[tuple[str, str, str, str]], int]:
    """(sha256, decision, label, note) per annotated task of a Label Studio JSON export, and how many
    tasks had no usable annotation. The choice equal to the given label is keep, EXCLUDE_CHOICE exclude,
    any other label relabel."""
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise UserError(f"{where}: not a Label Studio JSON export (a list of tasks)")
    out, unannotated = [], 0
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise UserError(f"{where}: task {n} is not a JSON object")
        sha = _task_sha(task)
        picked = _annotation_choice(task)
        if picked is None:
            unannotated += 1
            continue
        if not sha:
            raise UserError(f"{where}: task {task.get('id', n)} names no image sha256 (data.sha256)")
        choice, who = picked
        data = task.get("data") if isinstance(task.get("data"), dict) else task
        given = [g for g in str(data.get("given_label", "")).split(";") if g]
        note = f"Label Studio task {task.get('id', n)}" + (f" by {who}" if who else "")
        if choice == EXCLUDE_CHOICE:
            out.append((sha, "exclude", "", note))
        elif given == [choice]:
            out.append((sha, "keep", "", note))
        else:
            out.append((sha, "relabel", choice, note))
    return out, unannotated


def dumps_tasks(tasks: list[dict]) -> str:
    return json.dumps(tasks, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
