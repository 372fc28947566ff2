"""Evaluation pictures: confusion matrices, reliability diagram, gallery of the most confident mistakes.
Each function draws with matplotlib's Agg backend and writes one PNG atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.common.atomic import save_figure
from tasks.common.reports import image_grid, pyplot

# Above this many classes the per-cell numbers become unreadable; the colours still tell the story.
_MAX_ANNOTATED_CLASSES = 25


def confusion_plot(matrix: np.ndarray, classes: list[str], target: str | Path, title: str) -> Path:
    """Heat map, rows = true class, columns = predicted. Integer matrices are annotated as counts,
    float (row-normalized) ones as shares."""
    plt = pyplot()
    n = len(classes)
    side = min(20.0, max(4.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    if n <= _MAX_ANNOTATED_CLASSES:
        is_count = np.issubdtype(matrix.dtype, np.integer)
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = f"{value:d}" if is_count else f"{value:.2f}"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=7, color="white" if value > threshold else "black"
                )
    return save_figure(fig, target)


def reliability_plot(table: pd.DataFrame, ece: float, target: str | Path, title: str) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with bin counts below."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = table["upper"] - table["lower"]
    filled = table["count"] > 0
    top.bar(
        table["lower"][filled],
        table["accuracy"][filled],
        width=width[filled],
        align="edge",
        edgecolor="#2b4a7a",
        color="#4c72b0",
        label="accuracy",
    )
    top.bar(
        table["lower"][filled],
        (table["confidence"] - table["accuracy"])[filled],
        width=width[filled],
        bottom=table["accuracy"][filled],
        align="edge",
        color="#dd8452",
        alpha=0.5,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {ece:.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(table["lower"], table["count"], width=width, align="edge", color="#8c8c8c")
    bottom.set(xlim=(0, 1), xlabel="confidence of the predicted class", ylabel="images")
    return save_figure(fig, target)


def confident_mistakes(y_true: np.ndarray, proba: np.ndarray, limit: int) -> np.ndarray:
    """Positions of wrong predictions, most confident first, at most `limit`."""
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(y_true))
    order = np.argsort(-proba[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:limit]


def mistakes_gallery(
    images: np.ndarray,
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    target: str | Path,
    limit: int,
    cols: int = 8,
) -> np.ndarray:
    """Grid of the most confident mistakes, each captioned true / predicted (score). `images` is
    uint8 NHWC aligned with y_true. Returns the positions shown."""
    shown = confident_mistakes(y_true, proba, limit)
    fig, axes = image_grid(len(shown), cols, (1.8, 2.1), "no mistakes")
    for ax, pos in zip(axes.flat, shown):
        image = np.asarray(images[pos])
        predicted = int(proba[pos].argmax())
        if image.shape[-1] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image)
        ax.set_title(
            f"true: {classes[int(y_true[pos])][:14]}\npred: {classes[predicted][:14]} ({proba[pos, predicted]:.2f})",
            fontsize=7,
        )
    fig.suptitle("most confident mistakes", fontsize=9)
    save_figure(fig, target)
    return shown
