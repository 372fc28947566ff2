"""`imgcls review`: the human side of the data checks. Builds the review queue from the latest reports,
records decisions (keep / relabel / exclude) in paths.label_decisions, and trades the queue with Label
Studio. The logic is in tasks.common.review_queue and tasks.common.label_decisions; ingest applies the
decisions on its next run (docs/review.md)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.common import label_decisions as ld
from tasks.common import review_queue as rq
from tasks.common.atomic import write_csv, write_text
from tasks.common.errors import UserError
from tasks.common.params import DEFAULT_PARAMS, Paths, parse_section, read_yaml
from tasks.labelling.reports import GROUP_COLUMNS, GROUPS_CSV, GROUPS_HTML, NEXT_CSV, UNLABELLED_DIR

LABEL_STUDIO_PREFIX = "/data/local-files/?d="  # Label Studio's local file serving (docs/review.md)


@dataclass
class Context:
    paths: Paths
    classes: list[str] | None  # validate.classes, when listed
    unlabelled: str | None = None  # ingest.unlabelled: the folder `review group` reads
    max_pixels: int = 40_000_000  # clean.max_pixels: no larger image is decoded

    @classmethod
    def load(cls, params_path: str | Path = DEFAULT_PARAMS) -> Context:
        from tasks.clean import Params as CleanParams
        from tasks.ingest import Params as IngestParams
        from tasks.validate import Params as ValidateParams

        data = read_yaml(params_path)
        paths = parse_section(data, "paths", Paths, params_path)
        return cls(
            paths,
            parse_section(data, "validate", ValidateParams, params_path).classes,
            parse_section(data, "ingest", IngestParams, params_path).unlabelled,
            parse_section(data, "clean", CleanParams, params_path).max_pixels,
        )

    def queue_dir(self) -> Path:
        return self.paths.report_dir("review")

    def unlabelled_dir(self) -> Path:
        return self.queue_dir() / UNLABELLED_DIR

    def unlabelled_groups(self) -> pd.DataFrame:
        """The last `review group`'s groups.csv (the files it found), empty when it has not run."""
        path = self.unlabelled_dir() / GROUPS_CSV
        if not path.is_file():
            return pd.DataFrame(columns=GROUP_COLUMNS)
        return pd.read_csv(path, dtype=str, keep_default_na=False)

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
            self.unlabelled_dir() / GROUPS_CSV,
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
    """Check every (sha, decision, label, note) first (known image, known class), then append them all.
    A relabelled unlabelled image (from `review group`) is first copied into paths.inbox/<label>/, so the
    next ingest takes it in as a labelled image."""
    known = ctx.known_images()
    decisions = [ld.make_decision(ld.resolve(sha, known), d, label, note, user, via) for sha, d, label, note in items]
    if any(d.decision == "relabel" for d in decisions):
        ld.check_labels(decisions, ctx.known_classes())
    unlabelled = _unlabelled_files(ctx)
    for d in decisions:
        if d.sha256 in unlabelled and d.decision == "keep":
            raise UserError(f"{d.sha256[:12]}: an unlabelled image has no label to keep: --relabel LABEL or --exclude")
    for d in decisions:
        if d.sha256 in unlabelled and d.decision == "relabel":
            _copy_to_inbox(unlabelled[d.sha256], d.sha256, d.label, Path(ctx.paths.inbox))
    ld.append(ctx.paths.label_decisions, decisions, ctx.paths.cache)
    return decisions


def _unlabelled_files(ctx: Context) -> dict[str, Path]:
    """sha256 -> file of the unlabelled images `review group` found (not already labelled data)."""
    groups = ctx.unlabelled_groups()
    return {r.sha256: Path(r.path) for r in groups.itertuples(index=False) if r.sha256 and not r.error}


def _copy_to_inbox(file: Path, sha: str, label: str, inbox: Path) -> Path:
    """inbox/<label>/<sha prefix>-<name>, written atomically; the label is a known class, but it names a
    folder here, so a path separator or a dot name is refused."""
    if not label or label in (".", "..") or "/" in label or os.sep in label or "\0" in label:
        raise UserError(f"label {label!r} cannot name an inbox folder")
    target = inbox / label / f"{sha[:16]}-{file.name}"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(file, tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"{file}: cannot copy into {target.parent} ({type(exc).__name__}: {exc})") from None
    return target


def accept_group(
    ctx: Context, group: int, label: str | None = None, note: str = "", user: str | None = None
) -> list[ld.Decision]:
    """Relabel every undecided member of a `review group` group to its proposed label (or `label`)."""
    groups = ctx.unlabelled_groups()
    if groups.empty:
        raise UserError(f"no groups yet: run `imgcls review group` first ({ctx.unlabelled_dir() / GROUPS_CSV})")
    members = groups[(groups["group"] == str(group)) & (groups["error"] == "")]
    if members.empty:
        known = sorted({int(g) for g in groups["group"] if g != ""})
        raise UserError(f"no group {group} in {ctx.unlabelled_dir() / GROUPS_CSV} (groups: {known})")
    label = label or members["proposed_label"].iloc[0]
    if not label:
        raise UserError(f"group {group} has no proposed label: give one with --label")
    decided = ld.load_latest(ctx.paths.label_decisions)
    todo = [sha for sha in dict.fromkeys(members["sha256"]) if sha not in decided]
    note = note or f"accepted group {group}"
    return _record(ctx, [(sha, "relabel", label, note) for sha in todo], "accept-group", user)


def group_unlabelled(
    ctx: Context, folder: str | None = None, n_next: int = 20, model_uri: str | None = None, seed: int = 0
):
    """`imgcls review group`: embed, group and rank the unlabelled folder; write groups.csv, groups.html
    and next_to_label.csv under reports/review/unlabelled/, then rebuild the queue with them. Images
    with a decision (accepted, relabelled, excluded) or already in the labelled data are left out."""
    from tasks.labelling import pipeline

    folder = folder or ctx.unlabelled
    if not folder:
        raise UserError("no unlabelled folder: set ingest.unlabelled in params.yaml or give --folder")
    if n_next < 0:
        raise UserError(f"--next must be >= 0, got {n_next}")
    found = pipeline.scan_folder(folder)
    manifest = ctx._manifest(["image_id", "label"])
    skip = set(ld.load_latest(ctx.paths.label_decisions))
    if manifest is not None:
        skip |= set(manifest["image_id"])
    if not found:
        raise UserError(f"{folder}: no files found")
    found = [f for f in found if f.sha256 not in skip]
    labelled = _labelled_sample(ctx, manifest, seed) if model_uri is None else []
    with tempfile.TemporaryDirectory(prefix="imgcls-group-") as tmp:
        predictor = _load_model(model_uri, tmp) if model_uri else None
        result = pipeline.analyse(found, labelled, predictor, n_next, ctx.max_pixels, seed)
    out = ctx.unlabelled_dir()
    write_csv(result.groups, out / GROUPS_CSV)
    write_csv(result.next_to_label, out / NEXT_CSV)
    write_text(pipeline.groups_html(result.groups), out / GROUPS_HTML)
    if (result.groups["error"] == "").any() or (ctx.queue_dir() / "queue.csv").is_file():
        build(ctx)  # (nothing readable and no queue yet: nothing to put in one)
    return result


def _labelled_sample(ctx: Context, manifest: pd.DataFrame | None, seed: int) -> list[tuple[str, str, object]]:
    """(sha256, label, source) of the labelled reference images (a fixed sample when there are many)."""
    from tasks.common.store import ImageStore
    from tasks.labelling.pipeline import sample_labelled

    if manifest is None or manifest.empty:
        return []
    manifest = manifest.drop_duplicates("image_id").sort_values("image_id")
    picked = manifest.iloc[sample_labelled(list(manifest["image_id"]), list(manifest["label"]), seed=seed)]
    label_of = dict(zip(picked["image_id"], picked["label"].astype(str), strict=True))
    sources = ImageStore(ctx.paths.store).sources(list(picked["image_id"]))
    return [(sha, label_of[sha], src) for sha, src in sources if src is not None]


def _load_model(model_uri: str, into: str):
    """A Predictor from a folder, a .ckpt, runs:/ or models:/ (flows.export resolves and downloads it)."""
    from flows.export import local_model, registry_version
    from models.predictor import load_predictor

    return load_predictor(local_model(model_uri, registry_version(model_uri), into))


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


def label_studio_image_url(store_file: str, image_prefix: str, image_root: Path) -> str:
    """A task's image reference. A file of a local store: `image_prefix` + its path under `image_root`
    (Label Studio's local file serving). An object of a remote store (s3://bucket/..., gs://...): the
    URL itself, which Label Studio resolves (presigned) through a cloud storage connected to the bucket."""
    if "://" in store_file:
        return store_file
    path = Path(store_file).resolve()
    shown = path.relative_to(image_root).as_posix() if path.is_relative_to(image_root) else path.as_posix()
    return f"{image_prefix}{shown}"


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
        return label_studio_image_url(store_file, image_prefix, root)

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
