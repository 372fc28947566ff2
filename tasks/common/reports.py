"""Reports every data stage writes to reports/<stage>/: flagged.csv (fixed reason vocabulary),
summary.md, a contact sheet of flagged images and a class-distribution chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from tasks.common.atomic import save_figure, write_csv, write_text

REASONS = (
    "corrupt",
    "too_large",
    "too_small",
    "low_information",
    "duplicate",
    "near_duplicate",
    "label_conflict",
    "outlier",
    "unknown_label",
    "rare_class",
    "suspect_label",
)
FLAGGED_COLUMNS = ["source_path", "image_id", "label", "reason", "detail", "kept_image_id"]


def flagged_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=FLAGGED_COLUMNS).fillna("")
    bad = set(df["reason"]) - set(REASONS)
    if bad:  # a programming error, not a user error: the vocabulary is fixed by DESIGN.md
        raise ValueError(f"unknown reason codes {sorted(bad)}")
    return df.sort_values(["reason", "source_path"], kind="stable").reset_index(drop=True)


def write_flagged(flagged: pd.DataFrame, out_dir: str | Path) -> Path:
    return write_csv(flagged[FLAGGED_COLUMNS], Path(out_dir) / "flagged.csv")


def summary_markdown(stage: str, flagged: pd.DataFrame, kept: pd.DataFrame, total: int, notes: list[str] = ()) -> str:
    # validate's warn policies and suspect labels flag images that stay in the manifest: only flagged
    # paths missing from `kept` were set aside
    set_aside = flagged.loc[~flagged["source_path"].isin(kept["source_path"]), "source_path"].nunique()
    flagged_kept = flagged["source_path"].nunique() - set_aside
    also = f", {flagged_kept} flagged but kept" if flagged_kept else ""
    lines = [f"# {stage}: {len(kept)} of {total} images kept, {set_aside} set aside{also}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    if len(flagged):
        lines += ["## Flagged, by reason", "", "| reason | images |", "|---|---|"]
        for reason, n in flagged["reason"].value_counts().sort_index().items():
            lines.append(f"| {reason} | {n} |")
        lines += ["", "## Flagged, by class and reason", ""]
        table = pd.crosstab(flagged["label"].astype(str), flagged["reason"])
        lines += [markdown_table(table.reset_index().rename(columns={"label": "class"})), ""]
    lines += ["## Kept, by class", "", "| class | images |", "|---|---|"]
    for label, n in kept["label"].astype(str).value_counts().sort_index().items():
        lines.append(f"| {label} | {n} |")
    return "\n".join(lines) + "\n"


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(out)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (stages run headless), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_distribution_chart(labels: pd.Series, target: str | Path, title: str) -> Path:
    plt = pyplot()
    counts = labels.astype(str).value_counts().sort_index()
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(counts) + 2), 3.5))
    ax.bar(counts.index, counts.values, color="#4c72b0")
    ax.set_title(title)
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=45)
    for i, v in enumerate(counts.values):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=7)
    return save_figure(fig, target)


def image_grid(count: int, cols: int, cell: tuple[float, float], empty_text: str):
    """(figure, axes grid) for `count` captioned images, `cols` wide, axes off; says `empty_text` when empty."""
    n = max(1, count)
    ncols = min(cols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not count:
        axes[0, 0].text(0.5, 0.5, empty_text, ha="center", va="center")
    return fig, axes


def contact_sheet(
    flagged: pd.DataFrame, image_path: Callable[[str], Path], target: str | Path, limit: int = 60, cols: int = 10
) -> Path:
    """Grid of flagged images, each captioned with its reason and label. Unreadable ones show a cross."""
    import numpy as np

    from tasks.common.images import DecodeError, decode, to_array

    # show every reason, not only the most frequent one: take round-robin across reasons
    rows = flagged.drop_duplicates("image_id")
    picked = pd.concat([g.head(limit) for _, g in rows.groupby("reason")]) if len(rows) else rows
    picked = picked.assign(_rank=picked.groupby("reason").cumcount()).sort_values(["_rank", "reason"]).head(limit)
    fig, axes = image_grid(len(picked), cols, (1.6, 1.9), "nothing flagged")
    for ax, row in zip(axes.flat, picked.itertuples(index=False)):
        try:
            arr = to_array(decode(image_path(row.image_id), max_pixels=4096 * 4096), 64, 3)
            ax.imshow(arr)
        except (DecodeError, OSError):
            ax.imshow(np.full((64, 64, 3), 235, np.uint8))
            ax.plot([0, 63], [0, 63], "r-", [0, 63], [63, 0], "r-")
        ax.set_title(f"{row.reason}\n{str(row.label)[:14]}", fontsize=7)
    return save_figure(fig, target)


def write_stage_reports(
    stage: str,
    out_dir: str | Path,
    flagged: pd.DataFrame,
    kept: pd.DataFrame,
    total: int,
    image_path: Callable[[str], Path],
    notes: list[str] = (),
) -> None:
    out_dir = Path(out_dir)
    write_flagged(flagged, out_dir)
    write_text(summary_markdown(stage, flagged, kept, total, list(notes)), out_dir / "summary.md")
    contact_sheet(flagged, image_path, out_dir / "flagged.png")
    class_distribution_chart(kept["label"], out_dir / "class_distribution.png", f"{stage}: images kept per class")
