"""validate: label checks on the cleaned manifest.

- unknown_label: a label outside `classes` (only when classes are listed)        warn | drop | fail
- rare_class:    a class with fewer than `min_per_class` images                  warn | drop | fail
- imbalance:     largest / smallest class above `max_imbalance` (not per image)  warn | fail
- suspect_label: likely mislabels found by confident learning on out-of-fold probabilities (the mean
                 of a kernel model on HOG + pixels, tasks.checks.confident_learning, and a small CNN,
                 tasks.checks.oof_cnn), kept only when the given label gets less than max_given_probability. They stay in the manifest with
                 suspect_label=True (augment keeps them out of training) unless action is drop.
                 The fold models of the last fit are kept (tasks.checks.suspect_cache): a run on data
                 grown by at most refit_growth scores only the new images with them (_reuse_plan says
                 when everything is fitted again), and the summary says which way ran.

`warn` keeps the rows and reports them; `drop` removes them from the validated manifest and reports
them; `fail` stops with one line naming the files or classes. Every flag lands in
reports/validate/flagged.csv, every warning in reports/validate/summary.md; the pictures are drawn
again only when what they show changed (figures_key.json beside them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from tqdm import tqdm

from tasks.checks import suspect_cache
from tasks.checks.champion_scores import champion_probabilities
from tasks.checks.confident_learning import (
    PROJECTION_SAMPLE,
    OofFit,
    OofMember,
    find_label_issues,
    fit_projection,
    fit_suspect_labels,
    image_features,
    kernel_inputs,
    kernel_model,
    score_unseen,
    with_projection,
)
from tasks.checks.confident_learning import project as project_features
from tasks.checks.oof_folds import ClusterFolds, FoldFitter, fit_here
from tasks.common import engine
from tasks.common.atomic import write_json, write_parquet, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.images import DecodeError, decode, to_array
from tasks.common.label_decisions import human_checked
from tasks.common.manifest import read_manifest
from tasks.common.params import Paths, Strict
from tasks.common.reports import (
    class_distribution_chart,
    contact_sheet,
    flagged_frame,
    summary_markdown,
    write_flagged,
)
from tasks.common.store import ImageStore

log = logging.getLogger(__name__)
Policy = Literal["warn", "drop", "fail"]


class SuspectLabelParams(Strict):
    enabled: bool = True
    folds: int = Field(3, ge=2)  # stratified K-fold (3: as good as 5 on the planted bench; BENCHMARKS.md)
    seed: int = 0
    method: Literal["prune_by_noise_rate", "confident_joint", "both"] = "prune_by_noise_rate"
    # flag only images whose given label gets less than this out-of-fold probability (1.0: no floor)
    max_given_probability: float = Field(0.05, gt=0.0, le=1.0)
    # ...and flag any image whose given label gets less than this, even if the rule does not pick it
    # (cleanlab's per-cell counts miss lone uniform flips; 0: off)
    certain_below: float = Field(0.03, ge=0.0, le=1.0)
    retrain: bool = True  # score again with models fitted without the first round's suspects
    # out-of-fold models: kernel (HOG + pixels, seconds), cnn (small CNN), ensemble (their mean: best)
    model: Literal["ensemble", "kernel", "cnn"] = "ensemble"
    image_size: int = Field(16, ge=4, le=64)  # kernel model: HOG of a 32x32 gray copy + image_size^2 RGB pixels
    cnn_epochs: int = Field(30, ge=1)  # tasks/checks/oof_cnn.py's docstring: why 30
    # training images the CNN sees per fold at most: a large dataset gets fewer epochs, down to one pass
    # over a sample of this size (each class in its share)
    cnn_budget: int = Field(100_000, ge=1)
    # training images the kernel model sees per fold at most (each class in its share, at least 100):
    # its fit's memory and time stop growing with the data set
    kernel_budget: int = Field(50_000, ge=100)
    # A weak model (hard data, tiny classes) would call a large share "suspect"; flag at most this
    # fraction, the least self-confident first, and say so in the summary.
    max_fraction: float = Field(0.1, gt=0.0, le=1.0)
    action: Literal["keep", "drop"] = "keep"  # keep: suspect_label=True (augment.exclude_suspects decides)
    # Images new since the last fit, as a share of the images it was fitted on, up to which the new ones
    # are scored by its fold models instead of fitting every model again (0: always fit again, unless
    # nothing changed). A relabelled fitted image, a new class or other settings always fit again.
    refit_growth: float = Field(0.1, ge=0.0)
    # Images new since the last fit are also scored by this registered model's champion, averaged with
    # the fold models (tasks/checks/champion_scores.py); keep equal to promote.model_name. null: off
    champion: str | None = Field("imgcls", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# settings that act after the out-of-fold models: changing them does not need a new fit
_AFTER_THE_MODELS = {"enabled", "refit_growth", "max_fraction", "action", "champion"}


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


_CNN_SIZE = 32
_CHUNK = 512  # images turned into kernel features at a time: memory stays flat on large datasets


def _decode_partition(image_ids: list[str], store: str, kernel_size: int | None, cnn: bool):
    """Engine task (tasks.common.engine): decode stored images named by id under the absolute `store`
    into kernel features (image_features of a 32x32 gray copy and kernel_size^2 RGB pixels; None when
    kernel_size is None) and 32x32 RGB arrays for the CNN (None unless `cnn`; one channel when the whole
    partition is grey); or, for the first image
    that does not decode, (its position, the error) as the third item."""
    gray, pixels, cnn_images = [], [], []
    images = ImageStore(store)  # an absolute path or a URL (tasks.common.store)
    for pos, (image_id, src) in enumerate(images.sources(image_ids, check=False)):  # remote: batched fetches
        try:
            if src is None:
                raise FileNotFoundError(f"{image_id} is not in the store {store}")
            img = decode(src)
        except (DecodeError, OSError) as exc:
            return None, None, (pos, str(exc))
        # only the small copies are kept: a partition of large photos never sits in memory decoded
        if cnn:
            cnn_images.append(to_array(img, _CNN_SIZE, 3))
        if kernel_size is not None:
            small_gray, small_rgb = kernel_inputs(img, kernel_size)
            gray.append(small_gray)
            pixels.append(small_rgb)
    features = image_features(np.stack(gray), np.stack(pixels)) if kernel_size is not None and gray else None
    cnn_images = np.stack(cnn_images) if cnn and cnn_images else None
    if cnn_images is not None and (cnn_images == cnn_images[..., :1]).all():
        cnn_images = cnn_images[..., :1].copy()  # grey: one channel travels and is kept (the CNN widens it)
    return features, cnn_images, None


def _member_kinds(cfg: SuspectLabelParams) -> list[str]:
    return {"kernel": ["kernel"], "cnn": ["cnn"], "ensemble": ["kernel", "cnn"]}[cfg.model]


def _decode_for_models(
    frame: pd.DataFrame, store: str, cfg: SuspectLabelParams, eng: engine.Engine, *, project: bool
) -> dict:
    """Decode the images of `frame` once (a partition at a time on the engine `eng`, tasks.common.engine)
    into what each out-of-fold model takes: {"kernel": features, "cnn": 32x32 RGB copies}, as
    `cfg.model` asks. The driver keeps these; never the decoded originals. With `project` (a full fit)
    and more than PROJECTION_SAMPLE images, the kernel features are kept as their label-free projection
    (fit_projection) fitted on a seeded sample of PROJECTION_SAMPLE images decoded first, so the driver
    holds every image's 240 bytes, not its 11 KB; the projection is data["projection"]. Otherwise (small
    data, or scoring a few new images) the full features: on a small set a projection fitted on every
    fold's images would also shape the axes by the very images being scored."""
    use_kernel = "kernel" in _member_kinds(cfg)
    data: dict = {}
    rows = np.arange(len(frame))
    first = rows
    project = project and use_kernel and len(rows) > PROJECTION_SAMPLE
    if project:
        first = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), PROJECTION_SAMPLE, replace=False))
    with tqdm(total=len(rows), desc="validate: decoding", unit="img", disable=None) as bar:
        raw = _decode_rows(frame, first, store, cfg, eng, data, bar)
        if project:
            data["projection"] = fit_projection(raw, cfg.seed)
            data["kernel"] = np.empty((len(rows), data["projection"][-1].n_components_), np.float32)
            data["kernel"][first] = project_features(data["projection"], raw)
            del raw
            rest = np.setdiff1d(rows, first, assume_unique=True)
            _decode_rows(frame, rest, store, cfg, eng, data, bar)
        elif use_kernel:
            data["kernel"] = raw
    return data


def _decode_rows(
    frame: pd.DataFrame, rows: np.ndarray, store: str, cfg: SuspectLabelParams, eng: engine.Engine, data: dict, bar
) -> np.ndarray | None:
    """Decode `rows` of `frame` into `data` (see _decode_for_models), filled in place at those rows:
    the CNN's copies into data["cnn"], the kernel features projected into data["kernel"] when
    data["projection"] is there; else the full kernel features of `rows` are returned (None: no kernel)."""
    kinds = _member_kinds(cfg)
    use_kernel, use_cnn = "kernel" in kinds, "cnn" in kinds
    ids = frame["image_id"].to_numpy(dtype=str)
    projection = data.get("projection")
    features = None
    done = 0
    parts = engine.partitions(rows, min(eng.partition_size, _CHUNK))  # _CHUNK: flat memory per task
    for part, (found, cnn_images, error) in zip(
        parts,
        eng.imap(
            _decode_partition,
            [ids[part].tolist() for part in parts],
            ImageStore(store).for_workers(),
            cfg.image_size if use_kernel else None,
            use_cnn,
        ),
    ):
        if error is not None:
            pos, message = error
            row = part[pos]
            raise UserError(
                f"{frame['source_path'].iat[row]} ({ids[row][:12]}) no longer decodes from the store ({message}); "
                "rerun clean"
            )
        if cnn_images is not None:
            if "cnn" not in data:  # the whole array once: concatenating chunks would hold it twice
                data["cnn"] = np.empty((len(frame), *cnn_images.shape[1:]), cnn_images.dtype)
            elif cnn_images.shape[-1] > data["cnn"].shape[-1]:  # the first colour partition: grey rows widen
                data["cnn"] = np.repeat(data["cnn"], cnn_images.shape[-1], axis=-1)
            data["cnn"][part] = cnn_images  # a grey partition among colour ones broadcasts to RGB
        if found is not None and projection is not None:
            data["kernel"][part] = project_features(projection, found)
        elif found is not None:
            if features is None:
                features = np.empty((len(rows), found.shape[1]), found.dtype)
            features[done : done + len(part)] = found
        done += len(part)
        bar.update(len(part))
    return features


def out_of_fold_members(data: dict[str, np.ndarray], cfg: SuspectLabelParams) -> list[OofMember]:
    """The out-of-fold models `cfg.model` asks for, over decoded `data` (_decode_for_models)."""
    members: list[OofMember] = []
    for kind in _member_kinds(cfg):
        if kind == "kernel":
            members.append(kernel_model(data["kernel"], cfg.seed, cfg.kernel_budget))
        else:
            from tasks.checks.oof_cnn import cnn_model  # torch: imported only when the CNN is used (fast CLI start)

            members.append(cnn_model(data["cnn"], epochs=cfg.cnn_epochs, budget=cfg.cnn_budget, seed=cfg.seed))
    return members


def fit_with_params(
    members: list[OofMember], y: np.ndarray, cfg: SuspectLabelParams, fit_folds: FoldFitter = fit_here
) -> OofFit:
    """fit_suspect_labels with the folds, seed, rule, floors and retraining `cfg` sets (bench/ calls it too)."""
    return fit_suspect_labels(
        members,
        y,
        folds=cfg.folds,
        seed=cfg.seed,
        method=cfg.method,
        max_given_probability=cfg.max_given_probability,
        certain_below=cfg.certain_below,
        retrain=cfg.retrain,
        fit_folds=fit_folds,
    )


@dataclass
class _ReusePlan:
    """How the last fit serves this run: `refit` says why it cannot (None: it can). `rows[i]` is the
    last fit's row of scored image i, -1 for an image it never scored."""

    refit: str | None
    rows: np.ndarray | None = None


def _reuse_plan(
    last: suspect_cache.LastFit | None,
    other_fit_exists: bool,
    ids: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    cfg: SuspectLabelParams,
) -> _ReusePlan:
    """Reuse the last fit only if its settings, code and libraries are these (the cache key), it knew
    the same classes, no image it was fitted on has another label now, and the images new since it
    are at most refit_growth x the images it was fitted on. Removed images simply drop out."""
    if last is None:
        why = "settings, code or libraries changed since the last fit" if other_fit_exists else "no usable earlier fit"
        return _ReusePlan(why)
    if last.classes != classes:
        added = sorted(set(classes) - set(last.classes))
        gone = sorted(set(last.classes) - set(classes))
        parts = ([f"new {', '.join(map(repr, added))}"] if added else []) + (
            [f"no longer scored {', '.join(map(repr, gone))}"] if gone else []
        )
        return _ReusePlan(f"the classes differ from the last fit's ({'; '.join(parts)})")
    if pd.Index(ids).has_duplicates or pd.Index(last.image_ids).has_duplicates:  # clean keeps one of each
        return _ReusePlan("an image id appears twice")
    rows = pd.Index(last.image_ids).get_indexer(ids)
    if cfg.refit_growth == 0:
        # today's rule: only the very images and labels of the last fit, in the same order
        same = last.fitted.all() and np.array_equal(last.image_ids, ids) and np.array_equal(last.labels, y)
        return _ReusePlan(None, rows) if same else _ReusePlan("the images changed and refit_growth is 0")
    known = rows >= 0
    relabelled = int((last.fitted[rows[known]] & (last.labels[rows[known]] != y[known])).sum())
    if relabelled:
        return _ReusePlan(f"{relabelled} image(s) the last fit learned from have another label now")
    n_fitted = int(last.fitted.sum())
    since = int((~known).sum() + (~last.fitted[rows[known]]).sum())  # new now, or scored by an earlier run
    if since > cfg.refit_growth * n_fitted:
        return _ReusePlan(
            f"{since} images new since the last fit ({n_fitted} images) is more than "
            f"refit_growth {cfg.refit_growth:.0%}"
        )
    return _ReusePlan(None, rows)


def _fit_and_keep(
    frame: pd.DataFrame, y: np.ndarray, classes: list[str], store: str, cache_dir: str, key: str, cfg
) -> np.ndarray:
    """Fit the out-of-fold models on every scored image (today's full run), keep the fit; its
    probabilities [N, K]. On a running cluster (engine.address) every (fold, model) is a task
    (tasks.checks.oof_folds); on the embedded LocalCluster the folds are fitted here, one after another:
    its workers share this machine's cores, and on 2 cores two single-threaded workers fitted the CNN's
    folds at 0.45x the speed of this process (bench/fold_tasks.py: 10,000 Fashion-MNIST images, 5 folds)."""

    with engine.session(len(frame), what="validate") as eng:
        data = _decode_for_models(frame, store, cfg, eng, project=True)
        members = out_of_fold_members(data, cfg)
        on_cluster = eng.running_cluster
        found = fit_with_params(members, y, cfg, ClusterFolds(eng)) if on_cluster else None
    if not on_cluster:  # after the embedded cluster is gone: its workers would only hold memory
        found = fit_with_params(members, y, cfg)
    fold_models = found.fold_models
    if "projection" in data:  # kept models take full features: later images are scored from those
        at = _member_kinds(cfg).index("kernel")
        fold_models = [
            [with_projection(data["projection"], m) if i == at else m for i, m in enumerate(fold)]
            for fold in fold_models
        ]
    suspect_cache.save_fit(
        cache_dir,
        key,
        image_ids=frame["image_id"].astype(str),
        labels=y,
        probs=found.probs,
        classes=classes,
        kinds=_member_kinds(cfg),
        fold_models=fold_models,
    )
    return found.probs


def _score_with_last_fit(
    last: suspect_cache.LastFit, rows: np.ndarray, frame: pd.DataFrame, y: np.ndarray, store: str, cache_dir: str, cfg
) -> tuple[np.ndarray | None, str]:
    """(probabilities [N, K], what scored the new images): the kept ones for images the last fit
    scored, the mean of its fold models for the new ones (decoded here, and only they), averaged with
    the champion's where there is one (cfg.champion). The new scores are kept with the fit, so the next
    run decodes only what is new to it. None when its fold models cannot be read."""
    new = rows < 0
    probs = np.empty((len(rows), len(last.classes)))
    probs[~new] = last.probs[rows[~new]]
    second = ""
    if new.any():
        fold_models = suspect_cache.load_fold_models(last, _member_kinds(cfg))
        if fold_models is None:
            return None, second
        with engine.session(int(new.sum()), what="validate") as eng:
            data = _decode_for_models(frame[new], store, cfg, eng, project=False)
        members = out_of_fold_members(data, cfg)
        probs[new] = score_unseen(members, fold_models, [data[m.kind] for m in members], len(last.classes))
        if cfg.champion:
            ids = frame["image_id"].to_numpy(dtype=str)[new]
            champion, second = champion_probabilities(cfg.champion, ids, store, last.classes)
            if champion is not None:
                probs[new] = (probs[new] + champion) / 2
                second = f"; the new ones also by {second} (averaged)"
            elif second:
                second = f"; {second}"
    # keep what the fit learned from (a relabel must be seen next time) and everything scored now
    present = np.zeros(len(last.image_ids), dtype=bool)
    present[rows[~new]] = True
    old = last.fitted | present
    if new.any() or not old.all():
        last.image_ids = np.concatenate([last.image_ids[old], frame["image_id"].to_numpy(dtype=str)[new]])
        last.labels = np.concatenate([last.labels[old], y[new]])
        last.fitted = np.concatenate([last.fitted[old], np.zeros(int(new.sum()), dtype=bool)])
        last.probs = np.concatenate([last.probs[old], probs[new]])
        suspect_cache.save_scores(cache_dir, last)
    return probs, second


def _suspect_probabilities(
    frame: pd.DataFrame, y: np.ndarray, classes: list[str], store: str, cache_dir: str, cfg: SuspectLabelParams
) -> tuple[np.ndarray, str]:
    """Out-of-fold (or, for images new since the last fit, out-of-sample) probabilities [N, K] of the
    scored images in `frame`, and one line saying how they were obtained."""
    settings = cfg.model_dump_json(exclude=_AFTER_THE_MODELS)
    key = suspect_cache.settings_key(settings)
    last = suspect_cache.load(cache_dir, key)
    folder = Path(cache_dir) / suspect_cache.FOLDER
    other = last is None and any(entry.stem != key for entry in folder.glob("*.npz"))
    ids = frame["image_id"].to_numpy(dtype=str)
    plan = _reuse_plan(last, other, ids, y, classes, cfg)
    if plan.refit is None:
        n_fitted = int(last.fitted.sum())
        n_new = int((plan.rows < 0).sum())
        growth = f"refit above {cfg.refit_growth:.0%} new"
        probs, second = _score_with_last_fit(last, plan.rows, frame, y, store, cache_dir, cfg)
        if probs is not None and n_new == 0:
            return probs, (
                f"suspect-label scores reused: no new images since the last run; the last fit ({n_fitted} images, "
                f"{last.folds} folds) is kept under paths.cache ({suspect_cache.FOLDER}); {growth}"
            )
        if probs is not None:
            return probs, (
                f"suspect labels: scored {n_new} new images with the {last.folds} fold models of the last fit "
                f"({n_fitted} images){second}; {growth}"
            )
        plan = _ReusePlan("the last fit's models are missing or unreadable")
    probs = _fit_and_keep(frame, y, classes, store, cache_dir, key, cfg)
    return probs, f"suspect labels: fitted the {cfg.folds} fold models on {len(y)} images ({plan.refit})"


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
    probs, how = _suspect_probabilities(frame.iloc[scored], y, list(scorable), store, cache_dir, cfg)
    log.info(how)
    found.notes.append(how)
    # confident learning on every scored image, fitted or new: the same rule as a full run's last round
    issues = find_label_issues(probs, y, cfg.method, cfg.max_given_probability, cfg.certain_below)
    given_p[scored] = probs[np.arange(len(y)), y]
    accuracy = float((probs.argmax(axis=1) == y).mean())
    found.notes.append(
        f"suspect-label model ({cfg.model}): out-of-fold accuracy {accuracy:.3f} on {len(y)} images "
        f"({cfg.folds} folds, method {cfg.method}, given-label probability below "
        f"{cfg.max_given_probability:g}, or below {cfg.certain_below:g} whatever the method"
        f"{', retrained without first-round suspects' if cfg.retrain else ''})"
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


FIGURES_KEY = "figures_key.json"


def _figure_keys(flagged: pd.DataFrame, kept: pd.DataFrame) -> dict[str, str]:
    """A key per picture over what it shows: the contact sheet the flagged images with their reason
    and label, the chart the kept images per class."""

    def digest(frame: pd.DataFrame) -> str:
        return hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()

    shown = flagged[["image_id", "reason", "label"]].astype(str).sort_values(["reason", "image_id"], kind="stable")
    counts = kept["label"].astype(str).value_counts().sort_index().rename_axis("label").reset_index()
    return {"flagged.png": digest(shown), "class_distribution.png": digest(counts)}


def _write_reports(out_dir: Path, flagged: pd.DataFrame, kept: pd.DataFrame, total: int, image_source, notes) -> None:
    """tasks.common.reports' stage reports; the CSV and summary every run, a picture only when what it
    shows changed (a scheduled run that flags the same images does not decode and draw them again)."""
    write_flagged(flagged, out_dir)
    write_text(summary_markdown("validate", flagged, kept, total, list(notes)), out_dir / "summary.md")
    keys = _figure_keys(flagged, kept)
    try:
        drawn = json.loads((out_dir / FIGURES_KEY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        drawn = {}
    stale = {name for name, key in keys.items() if drawn.get(name) != key or not (out_dir / name).exists()}
    if "flagged.png" in stale:
        contact_sheet(flagged, image_source, out_dir / "flagged.png")
    if "class_distribution.png" in stale:
        class_distribution_chart(kept["label"], out_dir / "class_distribution.png", "validate: images kept per class")
    if stale:
        write_json(keys, out_dir / FIGURES_KEY)


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
    _write_reports(
        paths.report_dir("validate"),
        flagged,
        validated,
        len(frame),
        ImageStore(paths.store).source,  # a Path, or the bytes of a remote (s3://) store's image
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
