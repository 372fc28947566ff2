"""validate: label checks on the cleaned manifest.

- unknown_label: a label outside `classes` (only when classes are listed)        warn | drop | fail
- rare_class:    a class with fewer than `min_per_class` images                  warn | drop | fail
- imbalance:     largest / smallest class above `max_imbalance` (not per image)  warn | fail
- suspect_label: likely mislabels found by confident learning on out-of-fold probabilities (the mean
                 of a kernel model on HOG + pixels, tasks.checks.confident_learning, and a small CNN,
                 tasks.checks.oof_cnn), kept only when the given label gets less than max_given_probability. They stay in the manifest with
                 suspect_label=True (augment keeps them out of training) unless action is drop.

`warn` keeps the rows and reports them; `drop` removes them from the validated manifest and reports
them; `fail` stops with one line naming the files or classes. Every flag lands in
reports/validate/flagged.csv, every warning in reports/validate/summary.md.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from tqdm import tqdm

from tasks.checks import suspect_cache
from tasks.checks.confident_learning import FitPredict, image_features, kernel_model, suspect_labels
from tasks.common import engine
from tasks.common.atomic import write_parquet
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.images import DecodeError, decode, to_array
from tasks.common.label_decisions import human_checked
from tasks.common.manifest import read_manifest, store_path
from tasks.common.params import Paths, Strict
from tasks.common.reports import flagged_frame, write_stage_reports

log = logging.getLogger(__name__)
Policy = Literal["warn", "drop", "fail"]


class SuspectLabelParams(Strict):
    enabled: bool = True
    folds: int = Field(5, ge=2)  # stratified K-fold; classes with fewer images are not scored
    seed: int = 0
    method: Literal["prune_by_noise_rate", "confident_joint", "both"] = "prune_by_noise_rate"
    # flag only images whose given label gets less than this out-of-fold probability (1.0: no floor)
    max_given_probability: float = Field(0.05, gt=0.0, le=1.0)
    retrain: bool = True  # score again with models fitted without the first round's suspects
    # out-of-fold models: kernel (HOG + pixels, seconds), cnn (small CNN), ensemble (their mean: best)
    model: Literal["ensemble", "kernel", "cnn"] = "ensemble"
    image_size: int = Field(16, ge=4, le=64)  # kernel model: HOG of a 32x32 gray copy + image_size^2 RGB pixels
    cnn_epochs: int = Field(8, ge=1)
    # training images the CNN sees per fold at most: a large dataset gets fewer epochs (at least one)
    cnn_budget: int = Field(100_000, ge=1)
    # A weak model (hard data, tiny classes) would call a large share "suspect"; flag at most this
    # fraction, the least self-confident first, and say so in the summary.
    max_fraction: float = Field(0.1, gt=0.0, le=1.0)
    action: Literal["keep", "drop"] = "keep"  # keep: suspect_label=True (augment.exclude_suspects decides)


class Params(Strict):
    classes: list[str] | None = None  # null: inferred from the data
    unknown_label: Policy = "drop"
    min_per_class: int = Field(10, ge=1)
    rare_class: Policy = "drop"
    max_imbalance: float = Field(20.0, ge=1.0)
    imbalance: Literal["warn", "fail"] = "warn"
    suspect_label: SuspectLabelParams = SuspectLabelParams()

    @field_validator("classes", mode="before")
    @classmethod
    def _names_as_text(cls, value):
        # `classes: [0, 1, 2]` in YAML means the folders "0", "1", "2"
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value):
        if value is not None:
            if not value:
                raise ValueError("must list at least one class, or be null to infer them")
            dupes = sorted({c for c in value if value.count(c) > 1})
            if dupes:
                raise ValueError(f"listed more than once: {', '.join(dupes)}")
        return value


def _examples(frame: pd.DataFrame, limit: int = 3) -> str:
    paths = frame["source_path"].astype(str).tolist()
    more = f", ... {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


class _Findings:
    """Flags, warnings and the keep-mask built up by the checks, in manifest row order."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.keep = np.ones(len(frame), dtype=bool)
        self.flagged: list[dict] = []
        self.notes: list[str] = []

    def flag(self, mask: np.ndarray, reason: str, details: list[str], drop: bool) -> None:
        for row, detail in zip(self.frame[mask].itertuples(index=False), details):
            self.flagged.append(
                {
                    "source_path": row.source_path,
                    "image_id": row.image_id,
                    "label": row.label,
                    "reason": reason,
                    "detail": detail,
                    "kept_image_id": "",
                }
            )
        if drop:
            self.keep &= ~mask

    def warn(self, text: str) -> None:
        log.warning(text)
        self.notes.append(f"warning: {text}")


def _check_unknown_labels(params: Params, found: _Findings) -> None:
    if params.classes is None:
        return
    frame = found.frame
    mask = ~frame["label"].isin(params.classes).to_numpy()
    if not mask.any():
        return
    unknown = sorted(frame.loc[mask, "label"].unique())
    if params.unknown_label == "fail":
        raise UserError(
            f"{int(mask.sum())} image(s) have labels not in validate.classes ({', '.join(map(repr, unknown))}): "
            f"{_examples(frame[mask])}; fix the labels, add the classes, or set validate.unknown_label to warn or drop"
        )
    details = [f"label {lab!r} is not one of validate.classes" for lab in frame.loc[mask, "label"]]
    found.flag(mask, "unknown_label", details, drop=params.unknown_label == "drop")
    if params.unknown_label == "warn":
        found.warn(
            f"{int(mask.sum())} image(s) with labels outside validate.classes kept as their own classes: "
            f"{', '.join(map(repr, unknown))}"
        )


def _check_rare_classes(params: Params, found: _Findings) -> None:
    frame = found.frame
    counts = frame.loc[found.keep, "label"].value_counts().to_dict()
    for declared in params.classes or []:
        counts.setdefault(declared, 0)
    rare = {name: n for name, n in sorted(counts.items()) if n < params.min_per_class}
    if not rare:
        return
    listing = ", ".join(f"{name!r} ({n})" for name, n in rare.items())
    if params.rare_class == "fail":
        raise UserError(
            f"classes with fewer than validate.min_per_class={params.min_per_class} images: {listing}; "
            f"add images or set validate.rare_class to warn or drop"
        )
    mask = found.keep & frame["label"].isin(list(rare)).to_numpy()
    details = [
        f"class {lab!r} has {counts[lab]} images (< min_per_class {params.min_per_class})"
        for lab in frame.loc[mask, "label"]
    ]
    found.flag(mask, "rare_class", details, drop=params.rare_class == "drop")
    empty = [name for name, n in rare.items() if n == 0]
    if empty:
        found.warn(f"classes listed in validate.classes without images: {', '.join(map(repr, empty))}")
    if params.rare_class == "warn":
        found.warn(f"rare classes kept (fewer than {params.min_per_class} images): {listing}")
    else:
        found.notes.append(f"rare classes dropped (fewer than {params.min_per_class} images): {listing}")


def _check_balance(params: Params, found: _Findings) -> None:
    counts = found.frame.loc[found.keep, "label"].value_counts()
    if len(counts) < 2:
        left = ", ".join(f"{name!r} ({n})" for name, n in counts.items()) or "none"
        raise UserError(f"a classifier needs at least 2 classes, {len(counts)} left after validation: {left}")
    ratio = counts.max() / counts.min()
    if ratio <= params.max_imbalance:
        return
    text = (
        f"class imbalance {ratio:.1f} exceeds validate.max_imbalance {params.max_imbalance:g} "
        f"(largest {counts.idxmax()!r} {counts.max()}, smallest {counts.idxmin()!r} {counts.min()})"
    )
    if params.imbalance == "fail":
        raise UserError(f"{text}; add images to small classes, or set validate.imbalance: warn")
    found.warn(text + "; consider augment.balance")


_HOG_SIZE = 32
_CNN_SIZE = 32
_CHUNK = 512  # images turned into kernel features at a time: memory stays flat on large datasets


def _decode_partition(image_ids: list[str], store: str, kernel_size: int | None, cnn: bool):
    """Engine task (tasks.common.engine): decode stored images named by id under the absolute `store`
    into kernel features (image_features of a 32x32 gray copy and kernel_size^2 RGB pixels; None when
    kernel_size is None) and 32x32 RGB arrays for the CNN (None unless `cnn`); or, for the first image
    that does not decode, (its position, the error) as the third item."""
    gray, pixels, cnn_images = [], [], []
    for pos, image_id in enumerate(image_ids):
        try:
            img = decode(store_path(store, image_id))
        except (DecodeError, OSError) as exc:
            return None, None, (pos, str(exc))
        if cnn:
            cnn_images.append(to_array(img, _CNN_SIZE, 3))
        if kernel_size is not None:
            gray.append(to_array(img, _HOG_SIZE, 1)[:, :, 0])
            pixels.append(to_array(img, kernel_size, 3))
    features = image_features(np.stack(gray), np.stack(pixels)) if kernel_size is not None and gray else None
    return features, (np.stack(cnn_images) if cnn and cnn_images else None), None


def _oof_models(frame: pd.DataFrame, store: str, cfg: SuspectLabelParams) -> list[FitPredict]:
    """Decode every scored image once (a partition at a time on the engine, tasks.common.engine) and
    build the out-of-fold models `cfg.model` asks for. The driver keeps the kernel features and, for
    the CNN, the 32x32 copies it trains on; never the decoded originals."""
    use_kernel, use_cnn = cfg.model in ("kernel", "ensemble"), cfg.model in ("cnn", "ensemble")
    ids = frame["image_id"].tolist()
    chunks, cnn_chunks = [], []
    start = 0
    with (
        engine.session(len(ids), what="validate") as eng,
        tqdm(total=len(ids), desc="validate: decoding", unit="img", disable=None) as bar,
    ):
        parts = engine.partitions(ids, min(eng.partition_size, _CHUNK))  # _CHUNK: flat memory per task
        for features, cnn_images, error in eng.imap(
            _decode_partition, parts, engine.absolute(store), cfg.image_size if use_kernel else None, use_cnn
        ):
            if error is not None:
                pos, message = error
                source, image_id = frame["source_path"].iat[start + pos], ids[start + pos]
                raise UserError(f"{source} ({image_id[:12]}) no longer decodes from the store ({message}); rerun clean")
            n = len(features) if features is not None else len(cnn_images)
            if features is not None:
                chunks.append(features)
            if cnn_images is not None:
                cnn_chunks.append(cnn_images)
            start += n
            bar.update(n)
    models = []
    if use_kernel:
        models.append(kernel_model(np.concatenate(chunks), cfg.seed))
    if use_cnn:
        from tasks.checks.oof_cnn import cnn_model  # torch: imported only when the CNN is used (fast CLI start)

        models.append(
            cnn_model(np.concatenate(cnn_chunks), epochs=cfg.cnn_epochs, budget=cfg.cnn_budget, seed=cfg.seed)
        )
    return models


def _check_suspect_labels(
    params: Params, found: _Findings, store: str, cache_dir: str, checked: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (suspect mask, given-label probability) over all rows; NaN where not scored. Rows in
    `checked` (a person kept or relabelled them: `imgcls review`) are scored but never flagged."""
    cfg = params.suspect_label
    frame = found.frame
    suspect = np.zeros(len(frame), dtype=bool)
    given_p = np.full(len(frame), np.nan)
    if not cfg.enabled:
        return suspect, given_p
    counts = frame.loc[found.keep, "label"].value_counts()
    scorable = sorted(counts[counts >= cfg.folds].index)
    if len(scorable) < 2:
        found.warn(f"suspect-label check skipped: fewer than 2 classes have {cfg.folds} (suspect_label.folds) images")
        return suspect, given_p
    scored = np.flatnonzero(found.keep & frame["label"].isin(scorable).to_numpy())
    if len(scored) < len(np.flatnonzero(found.keep)):
        found.notes.append(f"classes with fewer than {cfg.folds} images were not checked for suspect labels")
    labels = frame["label"].to_numpy()[scored]
    y = np.searchsorted(scorable, labels)
    key = suspect_cache.cache_key(frame["image_id"].iloc[scored], y, cfg.model_dump_json())
    cached = suspect_cache.load(cache_dir, key)
    if cached is None:
        probs, issues = suspect_labels(
            _oof_models(frame.iloc[scored], store, cfg),
            y,
            folds=cfg.folds,
            seed=cfg.seed,
            method=cfg.method,
            max_given_probability=cfg.max_given_probability,
            retrain=cfg.retrain,
        )
        suspect_cache.save(cache_dir, key, probs, issues)
    else:
        probs, issues = cached
        found.notes.append(
            "suspect-label scores reused: same images, labels, settings and code as an earlier run "
            f"({suspect_cache.FOLDER} under paths.cache)"
        )
    given_p[scored] = probs[np.arange(len(y)), y]
    accuracy = float((probs.argmax(axis=1) == y).mean())
    found.notes.append(
        f"suspect-label model ({cfg.model}): out-of-fold accuracy {accuracy:.3f} on {len(y)} images "
        f"({cfg.folds} folds, method {cfg.method}, given-label probability below "
        f"{cfg.max_given_probability:g}{', retrained without first-round suspects' if cfg.retrain else ''})"
    )
    if checked is not None and (issues & checked[scored]).any():  # human-checked: not flagged again
        found.notes.append(
            f"{int((issues & checked[scored]).sum())} image(s) a person kept or relabelled (imgcls review) not flagged"
        )
        issues = issues & ~checked[scored]
    limit = int(cfg.max_fraction * len(y))
    if issues.sum() > limit:
        found.warn(
            f"confident learning flagged {int(issues.sum())} images ({issues.mean():.1%}), more than "
            f"suspect_label.max_fraction {cfg.max_fraction:g}: only the {limit} least self-confident are "
            f"flagged (the model may be too weak for these images)"
        )
        candidates = np.flatnonzero(issues)
        keep_idx = candidates[np.argsort(probs[candidates, y[candidates]], kind="stable")[:limit]]
        issues = np.zeros_like(issues)
        issues[keep_idx] = True
    hits = np.flatnonzero(issues)
    suspect[scored[hits]] = True
    suggested = probs[hits].argmax(axis=1)
    details = [
        f"labelled {scorable[y[i]]!r} (p={probs[i, y[i]]:.2f}), looks like {scorable[s]!r} (p={probs[i, s]:.2f})"
        for i, s in zip(hits, suggested)
    ]
    found.flag(suspect, "suspect_label", details, drop=cfg.action == "drop")
    if hits.size:
        fate = (
            "dropped"
            if cfg.action == "drop"
            else "kept with suspect_label=True (augment.exclude_suspects keeps them out of training)"
        )
        found.notes.append(f"{hits.size} suspected mislabels {fate}")
    return suspect, given_p


def run(params: Params, paths: Paths) -> dict:
    cleaned = read_manifest(paths.cleaned, "clean")
    frame = cleaned.reset_index(drop=True).assign(label=lambda d: d["label"].astype(str))
    if frame.empty:
        raise UserError(f"{paths.cleaned} has no images: nothing to validate")
    found = _Findings(frame)
    _check_unknown_labels(params, found)
    _check_rare_classes(params, found)
    _check_balance(params, found)
    checked = human_checked(frame, paths.ingested)  # review decisions, from the manifest (imgcls review)
    suspect, given_p = _check_suspect_labels(params, found, paths.store, paths.cache, checked)

    validated = frame.assign(suspect_label=suspect, given_probability=given_p)[found.keep].reset_index(drop=True)
    flagged = flagged_frame(found.flagged)
    write_parquet(validated, paths.validated)
    write_stage_reports(
        "validate",
        paths.report_dir("validate"),
        flagged,
        validated,
        len(frame),
        lambda image_id: store_path(paths.store, image_id),
        found.notes,
    )
    return {
        "images": len(frame),
        "kept": len(validated),
        "classes": int(validated["label"].nunique()),
        "flagged": {reason: int(n) for reason, n in flagged["reason"].value_counts().sort_index().items()},
        "suspect_label": int(validated["suspect_label"].sum()),
        "warnings": [n for n in found.notes if n.startswith("warning: ")],
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
