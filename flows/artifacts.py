"""What a person sees of a run in the Prefect UI: markdown built from the reports the stages wrote.
The renderers are pure (text in, text out); `publish_*` read the report files and create artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.common import run_records
from tasks.common.params import Paths


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def data_quality_markdown(paths: Paths) -> str:
    parts = ["# Data quality", ""]
    for stage in ("clean", "validate"):
        summary = paths.report_dir(stage) / "summary.md"
        if summary.is_file():
            # stage summaries start at "#": nest them one level under this artifact's title
            parts += [
                "#" + line if line.startswith("#") else line
                for line in summary.read_text(encoding="utf-8").splitlines()
            ]
        else:
            parts.append(f"_{stage}: no summary.md was written_")
        parts.append("")
    return "\n".join(parts)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    lines = ["# Evaluation metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(metrics.items())]
    return "\n".join(lines) + "\n"


def decision_markdown(decision: dict[str, Any]) -> str:
    """Scalar fields as a list, then every gate as a row (columns: whatever the gates report)."""
    gates = decision.get("gates") or []
    lines = ["# Promotion decision", ""]
    lines += [f"- **{k}**: {_cell(v)}" for k, v in decision.items() if not isinstance(v, (list, dict))]
    if gates:
        cols = list(dict.fromkeys(col for gate in gates for col in gate))
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(g.get(c, "")) for c in cols) + " |" for g in gates]
    return "\n".join(lines) + "\n"


def mlflow_run_url(run_info: dict[str, Any]) -> str | None:
    uri = str(run_info.get("tracking_uri") or "")
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{run_info.get('experiment_id')}/runs/{run_info.get('run_id')}"


def mlflow_run_markdown(run_info: dict[str, Any]) -> str:
    uri = run_info.get("tracking_uri", "")
    return (
        f"# MLflow run\n\nrun `{run_info.get('run_id')}` (experiment {run_info.get('experiment_id')}) in `{uri}`.\n\n"
        f"Open it with `mlflow ui --backend-store-uri {uri}` and go to "
        f"`#/experiments/{run_info.get('experiment_id')}/runs/{run_info.get('run_id')}`.\n"
    )


def publish_data_quality(paths: Paths) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        data_quality_markdown(paths),
        key="imgcls-data-quality",
        description="clean + validate: what was set aside and why",
    )


def publish_model_reports(paths: Paths) -> dict[str, Any]:
    """Evaluation table, promotion decision and the MLflow run; returns what it found for the summary."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    found: dict[str, Any] = {}
    metrics = _read_json(paths.report_dir("evaluate") / "metrics.json")
    if metrics is not None:
        create_markdown_artifact(
            metrics_markdown(metrics), key="imgcls-evaluation", description="evaluate: metrics.json"
        )
        found["metrics"] = metrics
    decision = _read_json(paths.report_dir("promote") / "decision.json")
    if decision is not None:
        create_markdown_artifact(
            decision_markdown(decision), key="imgcls-promotion", description="promote: gates and decision"
        )
        found["decision"] = decision
    run_info = run_records.read_run(paths.train_dir, missing_ok=True)
    if run_info is not None:
        url = mlflow_run_url(run_info)
        if url:
            create_link_artifact(url, link_text=f"MLflow run {run_info.get('run_id')}", key="imgcls-mlflow-run")
        else:
            create_markdown_artifact(
                mlflow_run_markdown(run_info), key="imgcls-mlflow-run", description="the training run"
            )
        found["mlflow_run_id"] = run_info.get("run_id")
        found["mlflow_run_url"] = url
    return found


def publish_skip(note: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        f"# Model stages skipped\n\n{note}\n",
        key="imgcls-skipped",
        description="augment/train/evaluate/promote did not run",
    )
