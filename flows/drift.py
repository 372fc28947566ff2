"""Drift watch: what the server was asked to score, compared with what the model was trained on.

`InputRecorder.record(image)` is called by the server once per scored request. It appends one JSON line
of cheap, model-agnostic statistics to a bounded, rotating log (default reports/serve/inputs/):

    raw width, height, channels               (recorded, summarised, never compared: training arrays are resized)
    brightness, contrast, sharpness           (on a GRIDxGRID grayscale copy: independent of the raw size)
    thumb                                     (8x8 grayscale thumbnail, 0..255: the embedding)
    label, score                              (the served prediction, when the server passes it)

It is thread-safe (and safe across worker processes: an flock around append + rotation) and never
raises: a statistic that cannot be computed costs the request nothing.

`check_drift(paths)` (`imgcls drift`) compares the last `window` served inputs with the train split of
the prepared store (the same statistics computed on its uint8 arrays): PSI per statistic (bins at the
training quantiles) and an MMD two-sample test (RBF kernel, median bandwidth, permutation p-value) on the
thumbnails. It writes reports/drift/report.json and reports/drift/drift.png, and inside a Prefect run a
markdown artifact. `should_retrain(report, threshold)` is the decision a scheduled flow can act on."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.errors import UserError
from tasks.common.params import Paths

log = logging.getLogger(__name__)

GRID = 32  # statistics are computed on a GRIDxGRID grayscale copy (bilinear, as augment resizes)
THUMB = 8  # embedding: THUMBxTHUMB mean-pooled grayscale thumbnail
STATS = ("brightness", "contrast", "sharpness")
LOG_NAME = "inputs.jsonl"
LOCK_NAME = ".lock"
DEFAULT_MAX_BYTES = 5_000_000  # per log file; ~10k requests at ~450 bytes a line
DEFAULT_BACKUPS = 4  # rotated files kept: the log never holds more than (1 + backups) * max_bytes
DEFAULT_WINDOW = 500
DEFAULT_THRESHOLD = 0.2  # PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift
DEFAULT_ALPHA = 0.01  # MMD permutation test significance
MIN_SAMPLES = 30  # fewer served inputs than this: no verdict
MAX_TRAIN = 2000  # training images sampled for the comparison
MMD_MAX = 500  # per side, for the O(n^2) kernel test
PERMUTATIONS = 200
PSI_BINS = 10  # at most; fewer for small windows (see check_drift)
DRIFT_EXIT = 3  # `imgcls drift` exit code when retraining is recommended (2 = user error)


def default_log_dir(paths: Paths) -> Path:
    return Path(paths.reports) / "serve" / "inputs"


# ---------------------------------------------------------------------------------------------- statistics


def _as_image(image):
    """PIL image (any mode), uint8/float array (HxW, HxWx1, HxWx3, HxWx4) or encoded bytes -> L/RGB image."""
    from PIL import Image

    from tasks.common.images import decode, normalize_mode

    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(bytes(image))
    if isinstance(image, Image.Image):
        return normalize_mode(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.size == 0 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"not an image array: shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if np.nanmax(arr) <= 1.0:  # 0..1 floats
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    return normalize_mode(Image.fromarray(np.ascontiguousarray(arr)))


def features(image) -> dict[str, Any]:
    """The per-image statistics of the module docstring (thumb as 64 ints 0..255)."""
    from PIL import Image

    img = _as_image(image)
    width, height = img.size
    gray = img.convert("L")
    if gray.size != (GRID, GRID):
        gray = gray.resize((GRID, GRID), Image.Resampling.BILINEAR)
    g = np.asarray(gray, dtype=np.float64) / 255.0
    sharpness = (np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2
    step = GRID // THUMB
    thumb = g.reshape(THUMB, step, THUMB, step).mean(axis=(1, 3))
    return {
        "width": int(width),
        "height": int(height),
        "channels": 1 if img.mode == "L" else 3,
        "brightness": round(float(g.mean()), 5),
        "contrast": round(float(g.std()), 5),
        "sharpness": round(float(sharpness), 5),
        "thumb": [int(v) for v in np.rint(thumb * 255).astype(int).ravel()],
    }


# ---------------------------------------------------------------------------------------------- recording


class InputRecorder:
    """Appends one JSON line per scored request to `folder`/inputs.jsonl, rotating it at `max_bytes`
    into inputs.1.jsonl .. inputs.<backups>.jsonl (the oldest is dropped). `record` never raises."""

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS):
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be > 0 and backups >= 0")
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self.errors = 0
        self._lock = threading.Lock()

    def record(
        self, image, *, label: str | None = None, score: float | None = None, model_version: str | None = None
    ) -> bool:
        """True when a line was written; False (and a rate-limited warning) on any failure."""
        try:
            row: dict[str, Any] = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds")}
            row.update(features(image))
            if label is not None:
                row["label"] = str(label)
            if score is not None and math.isfinite(float(score)):
                row["score"] = round(float(score), 5)
            if model_version is not None:
                row["model_version"] = str(model_version)
            data = (json.dumps(row, separators=(",", ":")) + "\n").encode("utf-8")
            with self._lock:
                self._append(data)
            return True
        except Exception as exc:  # drift statistics must never fail a prediction
            with self._lock:
                self.errors += 1
                errors = self.errors
            if errors == 1 or errors % 1000 == 0:
                log.warning("input statistics not recorded (%d so far): %s: %s", errors, type(exc).__name__, exc)
            return False

    def _append(self, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # the thread lock orders this process's threads; the flock orders several server processes
        with open(self.folder / LOCK_NAME, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = self.folder / LOG_NAME
                try:
                    size = current.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    self._rotate(current)
                with open(current, "ab") as fh:
                    fh.write(data)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _rotate(self, current: Path) -> None:
        if self.backups == 0:
            current.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.folder / f"inputs.{i}.jsonl"
            if older.exists():
                os.replace(older, self.folder / f"inputs.{i + 1}.jsonl")
        os.replace(current, self.folder / "inputs.1.jsonl")


def log_files(folder: str | Path) -> list[Path]:
    """Newest first: inputs.jsonl, inputs.1.jsonl, inputs.2.jsonl, ..."""
    folder = Path(folder)
    rotated = []
    for path in folder.glob("inputs.*.jsonl"):
        middle = path.name[len("inputs.") : -len(".jsonl")]
        if middle.isdigit():
            rotated.append((int(middle), path))
    current = [folder / LOG_NAME] if (folder / LOG_NAME).is_file() else []
    return current + [p for _, p in sorted(rotated)]


def _valid(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    try:
        if not all(math.isfinite(float(row[k])) for k in (*STATS, "width", "height")):
            return False
        thumb = row["thumb"]
        return (
            isinstance(thumb, list)
            and len(thumb) == THUMB * THUMB
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in thumb)
        )
    except (KeyError, TypeError, ValueError):
        return False


def read_log(folder: str | Path, window: int) -> tuple[list[dict], int]:
    """The last `window` valid records, oldest first, and how many lines were skipped as corrupt
    (a torn last line, a hand edit, a foreign file) on the way."""
    records: list[dict] = []
    skipped = 0
    for path in log_files(folder):
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:  # rotated away while reading
            continue
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not _valid(row):
                skipped += 1
                continue
            records.append(row)
            if len(records) >= window:
                return records[::-1], skipped
    return records[::-1], skipped


# ---------------------------------------------------------------------------------------------- tests


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS, eps: float = 1e-4) -> float:
    """Population stability index of `actual` against `expected`, bins at the deciles of `expected`."""
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    e, a = np.clip(e, eps, None), np.clip(a, eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict[str, float]:
    """Biased MMD^2 with an RBF kernel (bandwidth = median pairwise distance of the pooled sample) and its
    permutation p-value. Every permutation is one column of V: MMD^2 = v^T K v with v = +1/n, -1/m."""
    rng = np.random.default_rng(seed)
    z = np.vstack([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = (z * z).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    median = float(np.median(d2[np.triu_indices(len(z), 1)]))
    bandwidth2 = median if median > 0 else 1.0
    kernel = np.exp(-d2 / (2.0 * bandwidth2))
    signs = np.r_[np.full(n, 1.0 / n), np.full(m, -1.0 / m)]
    v = np.column_stack([signs] + [rng.permutation(signs) for _ in range(permutations)])
    stats = np.einsum("ij,ij->j", v, kernel @ v)
    observed = float(stats[0])
    p_value = (1 + int(np.sum(stats[1:] >= observed - 1e-12))) / (1 + permutations)
    return {
        "statistic": observed,
        "p_value": float(p_value),
        "bandwidth": math.sqrt(bandwidth2),
        "permutations": permutations,
        "n_train": n,
        "n_served": m,
    }


def training_features(prepared: str | Path, max_images: int = MAX_TRAIN, seed: int = 0) -> tuple[list[dict], dict]:
    """features() of (a seeded sample of) the prepared store's train split, and the store's facts."""
    from tasks.common.prepared import STATS as STATS_FILE
    from tasks.common.prepared import read_json, read_prepared

    store = read_prepared(prepared)
    train = store.split("train")
    if train.empty:
        raise UserError(f"{prepared}: the train split is empty: nothing to compare served inputs with")
    rng = np.random.default_rng(seed)
    rows = train["row"].to_numpy()
    if len(rows) > max_images:
        rows = rng.choice(rows, max_images, replace=False)
    rows = np.sort(rows)
    feats = []
    for start in range(0, len(rows), 256):  # the store is memory-mapped: one chunk in memory at a time
        feats += [features(a) for a in np.asarray(store.images[rows[start : start + 256]])]
    try:
        stats = read_json(prepared, STATS_FILE)
    except (FileNotFoundError, json.JSONDecodeError):
        stats = {}
    labels = train["label"].astype(str).value_counts(normalize=True).sort_index()
    return feats, {
        "image_size": stats.get("image_size", int(store.images.shape[1])),
        "channels": stats.get("channels", int(store.images.shape[3])),
        "train_images": len(train),
        "sampled": len(rows),
        "label_shares": {k: round(float(v), 4) for k, v in labels.items()},
    }


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=np.float64)


def _thumbs(rows: list[dict]) -> np.ndarray:
    return np.array([r["thumb"] for r in rows], dtype=np.float64) / 255.0


def _describe(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std()), 4),
        "p05": round(float(np.quantile(values, 0.05)), 4),
        "p95": round(float(np.quantile(values, 0.95)), 4),
    }


def should_retrain(report: dict, threshold: float | None = None) -> bool:
    """True when the report shows drift: some statistic's PSI >= threshold (default: the one the report
    was made with), or the embedding MMD test rejects at the report's alpha. Never on too little data."""
    if report.get("status") not in ("ok", "drift"):
        return False
    threshold = report.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold
    if any(v >= threshold for v in (report.get("psi") or {}).values()):
        return True
    p_value = (report.get("mmd") or {}).get("p_value")
    return p_value is not None and p_value < report.get("alpha", DEFAULT_ALPHA)


def _reasons(report: dict) -> list[str]:
    out = [f"{k} PSI {v:.3f} >= {report['threshold']}" for k, v in report["psi"].items() if v >= report["threshold"]]
    mmd = report.get("mmd") or {}
    if mmd.get("p_value") is not None and mmd["p_value"] < report["alpha"]:
        out.append(f"thumbnail MMD p={mmd['p_value']:.4f} < alpha {report['alpha']}")
    return out


def check_drift(
    paths: Paths,
    *,
    window: int = DEFAULT_WINDOW,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    log_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    min_samples: int = MIN_SAMPLES,
    seed: int = 0,
    missing_ok: bool = False,
    publish: bool = True,
) -> dict[str, Any]:
    """Compare the last `window` served inputs with the train split; write report.json (+ drift.png when
    there was enough to compare) under reports/drift/. `missing_ok`: a missing prepared store gives
    status "no_training_data" instead of a UserError (for the scheduled flow)."""
    from tasks.common.atomic import write_json

    if window < 1 or threshold <= 0 or not 0 < alpha < 1:
        raise UserError(
            f"drift: need window >= 1, threshold > 0 and 0 < alpha < 1 (got {window}, {threshold}, {alpha})"
        )
    log_dir = Path(log_dir) if log_dir else default_log_dir(paths)
    out_dir = Path(out_dir) if out_dir else paths.report_dir("drift")
    served, skipped = read_log(log_dir, window)
    report: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "log_dir": str(log_dir),
        "prepared": str(paths.prepared),
        "window": window,
        "threshold": threshold,
        "alpha": alpha,
        "served": len(served),
        "skipped_lines": skipped,
        "psi": {},
        "mmd": None,
        "notes": [],
    }
    if served:
        report["served_from"], report["served_to"] = served[0].get("ts"), served[-1].get("ts")
        report["served_size"] = {k: _describe(_column(served, k)) for k in ("width", "height")}
        labels = [r["label"] for r in served if isinstance(r.get("label"), str)]
        if labels:
            values, counts = np.unique(labels, return_counts=True)
            report["served_label_shares"] = {str(v): round(c / len(labels), 4) for v, c in zip(values, counts)}
    if len(served) < min_samples:
        report["status"] = "insufficient_data"
        report["notes"].append(f"{len(served)} served inputs in {log_dir}, fewer than {min_samples}: no verdict")
        return _finish(report, out_dir, None, None, publish, write_json)
    try:
        train, facts = training_features(paths.prepared, seed=seed)
    except UserError as exc:
        if not missing_ok:
            raise
        report["status"] = "no_training_data"
        report["notes"].append(str(exc))
        return _finish(report, out_dir, None, None, publish, write_json)
    report["train"] = facts
    compared = list(STATS)
    if facts["image_size"] < GRID:
        compared.remove("sharpness")  # upsampled training arrays are blurred by construction
        report["notes"].append(
            f"sharpness not compared: training arrays are {facts['image_size']}px, "
            f"upsampled to the {GRID}px statistics grid"
        )
    report["summary"] = {
        k: {"train": _describe(_column(train, k)), "served": _describe(_column(served, k))} for k in STATS
    }
    # PSI is biased upwards by about (bins - 1) * (1/n_served + 1/n_train) under no drift: fewer bins for a
    # small window (>= ~20 served inputs per bin) keep that bias well under any sensible threshold
    bins = int(np.clip(len(served) // 20, 4, PSI_BINS))
    report["psi_bins"] = bins
    report["psi"] = {k: round(psi(_column(train, k), _column(served, k), bins), 4) for k in compared}
    rng = np.random.default_rng(seed)
    x, y = _thumbs(train), _thumbs(served)
    if len(x) > MMD_MAX:
        x = x[rng.choice(len(x), MMD_MAX, replace=False)]
    if len(y) > MMD_MAX:
        y = y[-MMD_MAX:]  # the most recent
    report["mmd"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in mmd_test(x, y, seed=seed).items()}
    report["psi_max"] = max(report["psi"].values()) if report["psi"] else 0.0
    report["status"] = "drift" if should_retrain(report | {"status": "ok"}) else "ok"
    report["reasons"] = _reasons(report)
    report["retrain_recommended"] = report["status"] == "drift"
    if report["retrain_recommended"]:
        report["recommendation"] = (
            "served inputs have drifted from the training set (" + "; ".join(report["reasons"]) + "): label a "
            "sample of recent inputs (POST /feedback) and retrain (`imgcls run`; the new data changes the "
            "dataset version, so the model stages run)"
        )
    return _finish(report, out_dir, train, served, publish, write_json)


def _finish(report: dict, out_dir: Path, train, served, publish: bool, write_json) -> dict:
    if train is not None:
        report["plot"] = str(drift_plot(train, served, report, out_dir / "drift.png"))
    report["report"] = str(write_json(report, out_dir / "report.json"))
    if publish:
        publish_artifact(report)
    return report


def drift_plot(train: list[dict], served: list[dict], report: dict, target: Path) -> Path:
    """Histograms train vs served per statistic, the two mean thumbnails and the served raw sizes."""
    from tasks.common.atomic import save_figure
    from tasks.common.reports import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, key in zip(axes[0], STATS):
        a, b = _column(train, key), _column(served, key)
        bins = np.histogram_bin_edges(np.r_[a, b], bins=30)
        # one polygon per histogram (not 30 bars each): drawing time stays negligible
        ax.hist(a, bins=bins, density=True, histtype="stepfilled", alpha=0.5, label=f"train ({len(a)})")
        ax.hist(b, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"served ({len(b)})")
        value = report["psi"].get(key)
        ax.set(title=f"{key}: PSI {value:.3f}" if value is not None else f"{key}: not compared", xlabel=key)
        ax.legend(fontsize=8)
    for ax, rows, name in ((axes[1][0], train, "train"), (axes[1][1], served, "served")):
        ax.imshow(_thumbs(rows).mean(axis=0).reshape(THUMB, THUMB), cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"mean {THUMB}x{THUMB} thumbnail, {name}", xticks=[], yticks=[])
    mmd = report.get("mmd") or {}
    axes[1][1].set_xlabel(f"MMD p-value {mmd.get('p_value', float('nan')):.4f}")
    ax = axes[1][2]
    ax.scatter(_column(served, "width"), _column(served, "height"), s=8, alpha=0.5)
    ax.set(title="served raw sizes (not compared)", xlabel="width", ylabel="height")
    fig.suptitle(f"drift: {report['status']} (PSI threshold {report['threshold']}, alpha {report['alpha']})")
    fig.subplots_adjust(hspace=0.35, wspace=0.3)
    return save_figure(fig, target)


def drift_markdown(report: dict) -> str:
    lines = [
        f"# Input drift: {report['status']}",
        "",
        f"- served inputs compared: {report['served']} (window {report['window']}, "
        f"{report['skipped_lines']} corrupt log lines skipped)",
        f"- PSI threshold {report['threshold']}, MMD alpha {report['alpha']}",
    ]
    if report.get("recommendation"):
        lines += [f"- **retrain recommended**: {report['recommendation']}"]
    lines += [f"- {note}" for note in report.get("notes", [])]
    if report.get("summary"):
        lines += ["", "| statistic | train mean | served mean | PSI |", "|---|---|---|---|"]
        for key, s in report["summary"].items():
            value = report["psi"].get(key)
            lines.append(
                f"| {key} | {s['train']['mean']:.4f} | {s['served']['mean']:.4f} | "
                f"{'not compared' if value is None else f'{value:.4f}'} |"
            )
    if report.get("mmd"):
        mmd = report["mmd"]
        lines += [
            "",
            f"Thumbnail MMD^2 {mmd['statistic']:.5f}, p-value {mmd['p_value']:.4f} "
            f"({mmd['n_train']} train vs {mmd['n_served']} served, {mmd['permutations']} permutations).",
        ]
    return "\n".join(lines) + "\n"


def publish_artifact(report: dict) -> bool:
    """A Prefect markdown artifact, only inside a flow or task run (outside one, Prefect would start a
    temporary API just for this). Never fails the caller."""
    if "prefect" not in sys.modules:  # nothing imported Prefect: certainly not inside a run
        return False
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return False
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            drift_markdown(report), key="imgcls-drift", description="served inputs vs the training set"
        )
        return True
    except Exception as exc:
        log.warning("drift artifact not created: %s: %s", type(exc).__name__, exc)
        return False


def summary_lines(report: dict) -> list[str]:
    """What `imgcls drift` prints."""
    lines = [
        f"drift: {report['status']} ({report['served']} served inputs, {report['skipped_lines']} corrupt lines "
        f"skipped) -> {report['report']}"
    ]
    lines += [f"  {k}: PSI {v:.4f}" for k, v in report.get("psi", {}).items()]
    if report.get("mmd"):
        lines.append(f"  thumbnail MMD p-value {report['mmd']['p_value']:.4f}")
    lines += [f"  note: {n}" for n in report.get("notes", [])]
    if report.get("recommendation"):
        lines.append(f"retrain recommended: {report['recommendation']}")
    return lines
