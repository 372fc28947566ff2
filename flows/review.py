"""`imgcls review`: the human side of the data checks. Builds the review queue from the latest reports,
records decisions (keep / relabel / exclude) in paths.label_decisions, and trades the queue with Label
Studio. The logic is in tasks.common.review_queue and tasks.common.label_decisions; ingest applies the
decisions on its next run (docs/review.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.common import label_decisions as ld
from tasks.common import review_queue as rq
from tasks.common.atomic import write_csv, write_text
from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, Paths, parse_section, read_yaml

LABEL_STUDIO_PREFIX = "/data/local-files/?d="  # Label Studio's local file serving (docs/review.md)


@dataclass
class Context:
    paths: Paths
    classes: list[str] | None  # validate.classes, when listed

    @classmethod
    def load(cls, params_path: str | Path = DEFAULT_PARAMS) -> Context:
        from tasks.validate import Params as ValidateParams

        data = read_yaml(params_path)
        paths = parse_section(data, "paths", Paths, params_path)
        return cls(paths, parse_section(data, "validate", ValidateParams, params_path).classes)

    def queue_dir(self) -> Path:
        return self.paths.report_dir("review")

    def _manifest(self, columns: list[str]) -> pd.DataFrame | None:
        path = Path(self.paths.ingested)
        if not path.is_file():
            return None
        frame = pd.read_parquet(path)
        return frame[[c for c in columns if c in frame.columns]]

    def known_classes(self) -> set[str]:
        """What a relabel may name: validate.classes when listed, else the labels of the ingested data."""
        if self.classes:
            return set(self.classes)
        manifest = self._manifest(["label"])
        if manifest is None:
            raise UserError(f"{self.paths.ingested} not found: run the `ingest` stage first (or list validate.classes)")
        return set(manifest["label"].astype(str))

    def known_images(self) -> set[str]:
        """sha256s a decision may name: the ingested data, feedback under review, the queue, earlier decisions."""
        known = set(ld.read_history(self.paths.label_decisions)["sha256"])
        manifest = self._manifest(["image_id"])
        if manifest is not None:
            known |= set(manifest["image_id"])
        for report in (
            self.paths.report_dir("ingest") / "feedback_review.csv",
            self.queue_dir() / "queue.csv",
        ):
            if report.is_file():
                table = pd.read_csv(report, dtype=str, keep_default_na=False)
                known |= set(table.get("image_id", table.get("sha256", pd.Series(dtype=str))))
        return known


def build(ctx: Context, feedback_min_confidence: float = 0.5, html_limit: int = 600) -> pd.DataFrame:
    """reports/review/queue.csv + queue.html from the latest reports, decided images left out."""
    queue = rq.build_queue(ctx.paths, ld.load_latest(ctx.paths.label_decisions), feedback_min_confidence)
    write_csv(queue, ctx.queue_dir() / "queue.csv")
    write_text(rq.contact_sheet_html(queue, limit=html_limit), ctx.queue_dir() / "queue.html")
    return queue


def _record(ctx: Context, items: list[tuple[str, str, str, str]], via: str, user: str | None) -> list[ld.Decision]:
    """Check every (sha, decision, label, note) first (known image, known class), then append them all."""
    known = ctx.known_images()
    decisions = [ld.make_decision(ld.resolve(sha, known), d, label, note, user, via) for sha, d, label, note in items]
    if any(d.decision == "relabel" for d in decisions):
        ld.check_labels(decisions, ctx.known_classes())
    ld.append(ctx.paths.label_decisions, decisions, ctx.paths.cache)
    return decisions


def decide(
    ctx: Context, sha: str, decision: str, label: str = "", note: str = "", user: str | None = None
) -> ld.Decision:
    return _record(ctx, [(sha, decision, label, note)], "cli", user)[0]


def apply_csv(ctx: Context, file: str | Path, user: str | None = None) -> list[ld.Decision]:
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: not found")
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a broken table
        raise UserError(f"{file}: cannot read CSV ({type(exc).__name__}: {str(exc)[:120]})") from None
    return _record(ctx, rq.decisions_from_table(table, str(file)), "csv", user)


def export_label_studio(
    ctx: Context,
    out: str | Path,
    image_prefix: str = LABEL_STUDIO_PREFIX,
    image_root: str | Path = ".",
    feedback_min_confidence: float = 0.5,
) -> tuple[int, Path]:
    """The queue as Label Studio tasks (OUT.json) and the labeling interface they fit (OUT's name + .xml)."""
    queue = build(ctx, feedback_min_confidence)
    root = Path(image_root).resolve()

    def url(store_file: str) -> str:
        path = Path(store_file).resolve()
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        return f"{image_prefix}{shown}"

    tasks = rq.to_label_studio(queue, url, model_version="imgcls-validate-out-of-fold")
    out = Path(out)
    write_text(rq.dumps_tasks(tasks), out)
    config = out.with_suffix(".xml")
    classes = ctx.known_classes() | {lab for g in queue["given_label"] for lab in str(g).split(";") if lab}
    write_text(rq.labeling_config(classes), config)
    return len(tasks), config


def import_label_studio(ctx: Context, file: str | Path, user: str | None = None) -> tuple[list[ld.Decision], int]:
    file = Path(file)
    try:
        tasks = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: not JSON ({exc})") from None
    items, unannotated = rq.from_label_studio(tasks, str(file))
    return _record(ctx, items, "label-studio", user), unannotated
