"""The model card written at promotion: one markdown page per registered version, built from the reports
the stages already wrote (nothing is recomputed), logged to the version's run as model_card.md and set
as the registry version's description.

    data version        the dataset_version the model was trained on
    classes             per-class precision / recall / f1 / support (reports/evaluate/per_class.csv)
    calibration         ECE per evaluated split (reports/evaluate/metrics.json)
    data quality        images set aside or flagged, by reason (reports/{clean,validate}/flagged.csv)
    intended use        input size and channels from the prepared store's stats.json
    decision            promote's gates and outcome (the decision dict, as in reports/promote/decision.json)

A missing report is named in the card instead of failing promotion."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.common.params import Paths

CARD_FILE = "model_card.md"
# the registry keeps descriptions in a text column; stay well under any backend's limit
MAX_DESCRIPTION = 60_000


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in rows
    ]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, keep_default_na=False)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def reason_counts(paths: Paths) -> dict[str, dict[str, int]]:
    """stage -> reason -> flagged images, from reports/clean/flagged.csv and reports/validate/flagged.csv
    (a stage whose file is missing is left out; one with no rows maps to {})."""
    out: dict[str, dict[str, int]] = {}
    for stage in ("clean", "validate"):
        df = _read_csv(paths.report_dir(stage) / "flagged.csv")
        if df is None:
            continue
        if "reason" not in df.columns or df.empty:
            out[stage] = {}
            continue
        out[stage] = {str(k): int(v) for k, v in df["reason"].astype(str).value_counts().sort_index().items()}
    return out


def _per_class_section(paths: Paths) -> list[str]:
    path = paths.report_dir("evaluate") / "per_class.csv"
    df = _read_csv(path)
    if df is None or df.empty or "class" not in df.columns:
        return [f"_{path} not found: run the `evaluate` stage_"]
    split = "test" if "split" in df.columns and (df["split"] == "test").any() else None
    if split is None and "split" in df.columns:
        split = str(df["split"].iloc[-1])
    shown = df[df["split"] == split] if split is not None else df
    cols = [c for c in ("precision", "recall", "f1", "support") if c in shown.columns]
    rows = [[r["class"], *(float(r[c]) if c != "support" else int(r[c]) for c in cols)] for _, r in shown.iterrows()]
    return [
        f"{len(shown)} classes; metrics on the **{split}** split (reports/evaluate/per_class.csv):",
        "",
        *_table(["class", *cols], rows),
    ]


def _calibration_section(metrics: dict | None, path: Path) -> list[str]:
    if not metrics:
        return [f"_{path} not found: run the `evaluate` stage_"]
    eces = {k.split("/", 1)[0]: v for k, v in metrics.items() if k.endswith("/ece") and not k.startswith("baseline/")}
    if not eces:
        return ["_no ECE in metrics.json_"]
    lines = ["Expected calibration error of the top-class probability (0 = confidence matches accuracy):", ""]
    lines += _table(["split", "ECE"], [[split, float(v)] for split, v in sorted(eces.items())])
    headline = [k for k in ("test/acc", "test/macro_f1", "test/balanced_acc", "test/log_loss") if k in metrics]
    if headline:
        lines += ["", "Headline test metrics: " + ", ".join(f"{k} {float(metrics[k]):.4f}" for k in headline) + "."]
    return lines


def _quality_section(counts: dict[str, dict[str, int]]) -> list[str]:
    if not counts:
        return ["_no clean/validate reports found_"]
    rows = [[stage, reason, n] for stage, reasons in counts.items() for reason, n in reasons.items()]
    lines = [f"- {stage}: {sum(r.values())} images flagged" for stage, r in counts.items()]
    if rows:
        lines += ["", *_table(["stage", "reason", "images"], rows)]
    return lines + [
        "",
        "clean sets flagged images aside; validate's warnings and suspect labels may stay in the "
        "training data (see reports/<stage>/flagged.csv).",
    ]


def _intended_use(stats: dict | None, classes: list[str]) -> list[str]:
    if stats:
        size, channels = stats.get("image_size"), stats.get("channels")
        mode = "grayscale" if channels == 1 else "RGB" if channels == 3 else f"{channels}-channel"
        shape = f"resizes it to {size}x{size} {mode} ({channels} channel{'s' if channels != 1 else ''})"
    else:
        shape = "resizes it to the training input size (prepared stats.json not found)"
    names = ", ".join(classes) if classes else "the classes listed above"
    return [
        f"- **Input**: one image (PNG, JPEG, BMP, GIF, TIFF, WebP); the model decodes it, applies EXIF "
        f"orientation, flattens transparency onto white and {shape}, normalized with the training statistics.",
        f"- **Output**: one of {names}, with a probability per class. It always answers with one of these "
        'classes: it cannot say "none of the above".',
        "- **Intended use**: images like the training data: same kind of subject, framing, lighting and "
        "source. Use the score as a confidence only within the calibration shown above.",
        "- **Limits**: detail finer than the input size is lost; images from another domain (different "
        "camera, scanner, style or class balance) can be misclassified with high confidence; a class with "
        "little support has uncertain metrics. Watch served inputs with `imgcls drift`.",
    ]


def _decision_section(decision: dict | None) -> list[str]:
    if not decision:
        return ["_no promotion decision recorded_"]
    lines = [
        f"- **{k}**: {_cell(decision[k])}" for k in ("decision", "reason", "metric", "decided_at") if k in decision
    ]
    champion = decision.get("champion")
    lines.append(
        f"- **compared to**: {'version ' + str(champion['version']) if champion else 'no champion (first model)'}"
    )
    gates = decision.get("gates") or []
    if gates:
        cols = list(dict.fromkeys(c for g in gates for c in g))
        lines += ["", *_table(cols, [[g.get(c, "") for c in cols] for g in gates])]
    return lines


def model_card(
    paths: Paths,
    *,
    model_name: str,
    version: str | int,
    decision: dict | None = None,
    dataset_version: str | None = None,
    run_id: str | None = None,
    git_commit: str | None = None,
) -> str:
    """The card as markdown, from the reports under `paths` and promote's `decision`."""
    evaluate_dir = paths.report_dir("evaluate")
    metrics = _read_json(evaluate_dir / "metrics.json")
    stats = _read_json(Path(paths.prepared) / "stats.json")
    classes = _read_json(Path(paths.prepared) / "classes.json") or []
    per_class = _read_csv(evaluate_dir / "per_class.csv")
    if not classes and per_class is not None and "class" in per_class.columns:
        classes = list(dict.fromkeys(per_class["class"].astype(str)))
    facts = [
        f"- **model**: `{model_name}` version {version}",
        f"- **data version** (dataset_version): `{dataset_version or 'unknown'}`",
    ]
    if run_id:
        facts.append(f"- **training run**: `{run_id}`")
    if git_commit:
        facts.append(f"- **code**: git `{git_commit}`")
    if classes:
        facts.append(f"- **classes** ({len(classes)}): {', '.join(map(str, classes))}")
    parts = [
        f"# Model card: {model_name} v{version}",
        "",
        *facts,
        "",
        "## Per-class metrics",
        "",
        *_per_class_section(paths),
        "",
        "## Calibration",
        "",
        *_calibration_section(metrics, evaluate_dir / "metrics.json"),
        "",
        "## Data quality",
        "",
        *_quality_section(reason_counts(paths)),
        "",
        "## Intended use and limits",
        "",
        *_intended_use(stats, [str(c) for c in classes]),
        "",
        "## Promotion decision",
        "",
        *_decision_section(decision),
        "",
    ]
    return "\n".join(parts)


def attach_model_card(client, model_name: str, version: str | int, markdown: str) -> str:
    """Log `markdown` as model_card.md to the version's run (when it has one) and make it the version's
    registry description. Returns the artifact path ("" when the version has no run)."""
    import tempfile

    mv = client.get_model_version(model_name, str(version))
    artifact = ""
    if mv.run_id:
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / CARD_FILE
            card.write_text(markdown, encoding="utf-8")
            client.log_artifact(mv.run_id, str(card))
        artifact = f"runs:/{mv.run_id}/{CARD_FILE}"
    description = markdown
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION] + f"\n\n_(truncated: the full card is {artifact or CARD_FILE})_\n"
    client.update_model_version(model_name, str(version), description=description)
    return artifact
