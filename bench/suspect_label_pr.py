"""The precision-recall trade-off of validate's given-label floor, from finished data-quality runs
(`python -m bench.data_quality --workdir DIR`): for each threshold t, the planted label flips and the
other images whose given label got less than t out-of-fold probability (validate.parquet's
given_probability), and where the defaults sit (the flags validate actually made). One curve per run.
Besides, cleanlab's rules without a floor on the same out-of-fold probabilities (validate's cache).

    python -m bench.suspect_label_pr DIR [DIR ...] [--out bench/results/suspect_label_pr.png]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def curve(workdir: Path) -> dict:
    validated = pd.read_parquet(workdir / "project" / "data" / "manifests" / "validated.parquet")
    truth = pd.read_csv(workdir / "planted" / "truth.csv", keep_default_na=False)
    frame = validated.merge(truth[["source_path", "planted_reason"]], on="source_path", how="left")
    scored = frame["given_probability"].notna()
    flip = frame["planted_reason"].eq("suspect_label").to_numpy() & scored.to_numpy()
    given = frame["given_probability"].to_numpy(dtype=float)
    planted = int(frame["planted_reason"].eq("suspect_label").sum())
    points = []
    for t in THRESHOLDS:
        below = scored.to_numpy() & (given < t)
        hits = int((below & flip).sum())
        points.append({"threshold": t, "flagged": int(below.sum()), "hits": hits, "recall": hits / planted})
        points[-1]["precision"] = hits / max(int(below.sum()), 1)
    flagged = frame["suspect_label"].fillna(False).astype(bool).to_numpy()
    hits = int((flagged & flip).sum())
    defaults = {"flagged": int(flagged.sum()), "hits": hits, "recall": hits / planted}
    defaults["precision"] = hits / max(int(flagged.sum()), 1)
    return {
        "run": workdir.name,
        "planted_flips": planted,
        "floor_only": points,
        "defaults": defaults,
        "cleanlab_without_floor": cleanlab_rules(workdir, frame),
    }


CLEANLAB_RULES = ("prune_by_noise_rate", "both", "low_self_confidence", "low_normalized_margin")


def cleanlab_rules(workdir: Path, frame: pd.DataFrame) -> dict:
    """Flips found / images flagged by cleanlab's filter_by rules on the last fit's out-of-fold
    probabilities (tasks.checks.suspect_cache's npz under paths.cache)."""
    import numpy as np
    from cleanlab.filter import find_label_issues

    (scores,) = (workdir / "project" / ".imgcls" / "cache" / "validate_suspects").glob("*.npz")
    stored = np.load(scores)
    ids = np.char.decode(stored["image_ids"]).astype(str)
    flip = frame.set_index("image_id").loc[ids, "planted_reason"].eq("suspect_label").to_numpy()
    out = {}
    for rule in CLEANLAB_RULES:
        issues = find_label_issues(labels=stored["labels"], pred_probs=stored["probs"], filter_by=rule, n_jobs=1)
        out[rule] = {"hits": int((issues & flip).sum()), "flagged": int(issues.sum())}
    return out


def plot(curves: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for c in curves:
        line = ax.plot(
            [p["recall"] for p in c["floor_only"]],
            [p["precision"] for p in c["floor_only"]],
            marker=".",
            label=c["run"],
        )[0]
        ax.plot(c["defaults"]["recall"], c["defaults"]["precision"], marker="*", markersize=12, color=line.get_color())
    for p in curves[0]["floor_only"]:
        ax.annotate(f"{p['threshold']:g}", (p["recall"], p["precision"]), fontsize=7, alpha=0.7)
    ax.axvline(0.85, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("recall of the planted label flips")
    ax.set_ylabel("precision")
    ax.set_title("given-label probability < t (lines); validate's defaults (stars)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suspect_label_pr", description=__doc__)
    parser.add_argument("workdirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("bench/results/suspect_label_pr.png"))
    args = parser.parse_args(argv)
    curves = [curve(w) for w in args.workdirs]
    for c in curves:
        d = c["defaults"]
        print(f"{c['run']}: defaults {d['hits']}/{c['planted_flips']} flips, {d['flagged']} flagged")
        for p in c["floor_only"]:
            print(f"  < {p['threshold']:g}: {p['hits']} flips / {p['flagged']} (precision {p['precision']:.2f})")
        for rule, r in c["cleanlab_without_floor"].items():
            print(f"  cleanlab {rule}: {r['hits']} flips / {r['flagged']}")
    plot(curves, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(curves, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
