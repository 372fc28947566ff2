"""One pass over a folder of unlabelled images: find and hash the files, embed, group, propose a label
per group, and pick the next images to label. Returns tables; writing them and the review queue is
flows/review.py's job."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.errors import UserError
from tasks.common.images import Source, sha256_file
from tasks.labelling import embed, grouping, uncertainty
from tasks.labelling.reports import GROUP_COLUMNS, NEXT_COLUMNS

MAX_LABELLED = 5000  # labelled images used as reference (PCA, kNN, logistic regression): a fixed sample above


@dataclass
class Found:
    path: str  # as shown in the reports: the folder as given joined with the file's relative path
    file: Path
    sha256: str = ""
    error: str = ""


def scan_folder(folder: str | Path) -> list[Found]:
    """Every regular file under `folder` (any nesting, hidden names skipped, sorted), hashed. A link that
    leads out of the folder is a row with an error, not followed."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"unlabelled folder {folder!r} not found (ingest.unlabelled or --folder)")
    real_root = root.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            file = Path(dirpath) / name
            row = Found(str(file), file)
            try:
                if not file.resolve().is_relative_to(real_root):
                    row.error = "a link leading out of the folder (not followed)"
                elif not file.is_file():
                    row.error = "not a regular file"
                else:
                    row.sha256 = sha256_file(file)
            except OSError as exc:
                row.error = f"{type(exc).__name__}: {exc}"[:200]
            found.append(row)
    return found


def sample_labelled(ids: Sequence[str], labels: Sequence[str], limit: int = MAX_LABELLED, seed: int = 0) -> np.ndarray:
    """Positions of at most `limit` labelled images: all of them, or a fixed random sample."""
    n = len(ids)
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


@dataclass
class Result:
    groups: pd.DataFrame  # GROUP_COLUMNS, one row per file found
    next_to_label: pd.DataFrame  # NEXT_COLUMNS
    k: int
    silhouettes: dict[int, float]
    embedder: str  # "model" | "hog+pca"
    proposer: str  # "model" | "knn" | "none"


def analyse(
    found: list[Found],
    labelled: list[tuple[str, str, Source]],
    predictor=None,
    n_next: int = 20,
    max_pixels: int = 40_000_000,
    seed: int = 0,
) -> Result:
    """Group the found files and pick the next to label. `labelled`: (sha256, label, source) of the
    labelled data (may be empty); `predictor`: a models.predictor Predictor (or ensemble), or None."""
    ok = [f for f in found if not f.error]
    # one embedding per distinct content: two copies of a file are one image to label
    unique = list(dict.fromkeys(f.sha256 for f in ok))
    by_sha = {f.sha256: f for f in ok}
    size, channels = embed.model_input(predictor) if predictor is not None else (embed.HOG_SIZE, 3)
    decoded = embed.decode_all(((s, by_sha[s].file) for s in unique), size, channels, max_pixels)
    x_lab = y_lab = None
    if not decoded.keys:  # nothing decoded: the table lists what was found and why it was not read
        return Result(_groups_table(found, decoded, [], {}), pd.DataFrame(columns=NEXT_COLUMNS), 0, {}, "none", "none")
    if predictor is not None:
        x, probs = embed.model_embed(predictor, decoded.arrays)
        classes = list(predictor.classes)
        member_labels = np.asarray([classes[i] for i in probs.argmax(axis=1)], dtype=object) if len(probs) else None
        embedder, proposer = "model", "model"
    else:
        lab_decoded = _decode_labelled(labelled, max_pixels, seed)
        x, x_lab = embed.hog_pca_embed(decoded.arrays, lab_decoded[0] if lab_decoded else None, seed)
        y_lab = lab_decoded[1] if lab_decoded else None
        embedder = "hog+pca"
        if y_lab is not None and len(y_lab) and len(x):
            member_labels, proposer = grouping.knn_labels(x_lab, y_lab, x), "knn"
        else:
            member_labels, proposer = None, "none"
        probs, classes = _logistic_probs(x_lab, y_lab, x, seed)

    known = len(classes) if predictor is not None else len(set(y_lab)) if y_lab is not None else 0
    low, high = grouping.k_range(known)
    result = grouping.sweep(x, low, high, seed) if len(x) else grouping.Grouping(np.zeros(0, int), 0, {})
    proposals = grouping.propose(result.labels, member_labels)
    groups = _groups_table(found, decoded, result.labels, proposals)
    next_table = _next_table(decoded, by_sha, probs, classes, n_next)
    return Result(groups, next_table, result.k, result.silhouettes, embedder, proposer)


def _decode_labelled(labelled, max_pixels: int, seed: int):
    """(uint8 images, labels) of the labelled reference sample; None when there is none."""
    if not labelled:
        return None
    picked = sample_labelled([s for s, _, _ in labelled], [lab for _, lab, _ in labelled], seed=seed)
    rows = [labelled[i] for i in picked]
    decoded = embed.decode_all(((s, src) for s, _, src in rows), embed.HOG_SIZE, 3, max_pixels)
    label_of = {s: lab for s, lab, _ in rows}
    return decoded.arrays, np.asarray([label_of[k] for k in decoded.keys], dtype=object)


def _logistic_probs(x_lab, y_lab, x, seed: int):
    """Class probabilities of the unlabelled embeddings from a logistic regression on the labelled ones;
    (None, []) with fewer than two labelled classes (nothing to be uncertain between)."""
    if y_lab is None or len(set(y_lab)) < 2 or len(x) == 0:
        return None, []
    model = uncertainty.fit_logistic(x_lab, y_lab.astype(str), seed)
    return model.predict_proba(x), [str(c) for c in model.classes_]


def _groups_table(found, decoded, labels, proposals) -> pd.DataFrame:
    group_of = dict(zip(decoded.keys, labels, strict=True))
    rows = []
    for f in found:
        error = f.error or decoded.failed.get(f.sha256, "")
        g = group_of.get(f.sha256) if not error else None
        p = proposals.get(int(g)) if g is not None else None
        rows.append(
            {
                "path": f.path,
                "sha256": f.sha256,
                "group": int(g) if g is not None else pd.NA,
                "proposed_label": p.label if p else "",
                "confidence": round(p.confidence, 4) if p and not math.isnan(p.confidence) else math.nan,
                "error": error,
            }
        )
    table = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    table["group"] = table["group"].astype("Int64")
    return table


def _next_table(decoded, by_sha, probs, classes, n_next: int) -> pd.DataFrame:
    if probs is None or len(probs) == 0 or n_next <= 0:
        return pd.DataFrame(columns=NEXT_COLUMNS)
    margin = uncertainty.margins(probs)
    picked = uncertainty.pick_next(margin, decoded.keys, n_next)
    first, second = uncertainty.top_two(probs, classes)
    return pd.DataFrame(
        [
            {
                "rank": rank,
                "path": by_sha[decoded.keys[i]].path,
                "sha256": decoded.keys[i],
                "margin": round(float(margin[i]), 6),
                "predicted": first[i],
                "runner_up": second[i],
            }
            for rank, i in enumerate(picked, start=1)
        ],
        columns=NEXT_COLUMNS,
    )


def groups_html(groups: pd.DataFrame, per_group: int = 48, thumb: int = 72) -> str:
    """A self-contained page: one contact sheet per group with its proposed label and confidence, then
    the files that did not decode."""
    from tasks.common.review_queue import _thumbnail  # the queue's inline-PNG thumbnails

    esc = html.escape
    good = groups[groups["error"] == ""]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>imgcls unlabelled groups</title><style>",
        "body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:4px}",
        f"img{{width:{thumb}px;height:{thumb}px;object-fit:contain;image-rendering:pixelated;background:#eee}}",
        "</style></head><body>",
        f"<h1>{len(good)} unlabelled image(s) in {good['group'].nunique()} group(s)</h1>",
        "<p>Accept a group's label with <code>imgcls review accept-group G [--label X]</code>; decide single "
        "images with <code>imgcls review decide SHA --relabel X | --exclude</code>.</p>",
    ]
    for g, members in good.groupby("group", sort=True):
        first = members.iloc[0]
        proposal = (
            f"proposed <b>{esc(str(first['proposed_label']))}</b> (confidence {first['confidence']:.2f})"
            if first["proposed_label"]
            else "no proposal (no model and no labelled data)"
        )
        parts.append(f"<h2>group {int(g)}: {len(members)} image(s), {proposal}</h2><div class='grid'>")
        for row in members.head(per_group).itertuples(index=False):
            data = _thumbnail(row.path, thumb)
            if data:
                parts.append(f"<img alt='' title='{esc(row.path)}' src='data:image/png;base64,{data}'>")
        if len(members) > per_group:
            parts.append(f"<span>... {len(members) - per_group} more in groups.csv</span>")
        parts.append("</div>")
    bad = groups[groups["error"] != ""]
    if len(bad):
        parts.append(f"<h2>not read ({len(bad)})</h2><ul>")
        parts += [f"<li>{esc(r.path)}: {esc(r.error)}</li>" for r in bad.itertuples(index=False)]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
