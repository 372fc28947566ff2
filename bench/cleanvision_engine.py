"""CleanVision 0.3.7 (Apache-2.0, its wheel's LICENSE) vs clean's own checks on the same planted folder
(issue 11, item 2: image-property issues and duplicates measured side by side).

The folder is bench.planted's (the one bench/data_quality.py scores): Fashion-MNIST images of `--part`
with every planted fault. Clean runs as a project would (ingest + clean, params.yaml defaults); CleanVision's
Imagelab gets the same image files (minus the planted corrupt and 60000-px files, which it is not built
to judge and which our ingest rejects before any check) with its default issue types. A valid grey +
alpha (LA) PNG stops CleanVision 0.3.7's whole run (IndexError in its image-property pass), so LA files
are left out of its input too and counted.

Scored with bench.planted.score on the reasons both claim: duplicate (CleanVision exact_duplicates),
near_duplicate (near_duplicates), low_information (low_information), and label_conflict (a duplicate
or near-duplicate set whose members carry different labels, as clean defines it). CleanVision reports duplicate
SETS, not which member to set aside; it is given the most favourable choice: in each set the member
the truth calls unplanted (else the first) is kept and the others are flagged. Its other issue types
(dark, light, blurry, odd size/aspect ratio, grayscale) are reported as counts among unplanted images
and among the planted outliers.

    python -m bench.cleanvision_engine [--n 3000] [--seeds 0,1] [--part test]
    python -m bench.cleanvision_engine --quick          # n=300: a smoke run

Needs cleanvision (`pip install -c constraints.txt cleanvision`, the `bench` extra)."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from bench.common import run_stages, table, write_result
from bench.data_quality import fashion_base, write_project
from bench.planted import CLEAN, plant, score
from tasks.common.params import Paths

SHARED = {"exact_duplicates": "duplicate", "near_duplicates": "near_duplicate", "low_information": "low_information"}
OTHER = ("dark", "light", "blurry", "odd_aspect_ratio", "odd_size", "grayscale")
NOT_GIVEN = ("corrupt", "too_large")  # ingest rejects these before any check; not CleanVision's business


def own(planted: Path, project: Path) -> tuple[pd.DataFrame, float]:
    """clean's flagged.csv on the folder and the seconds of ingest + clean."""
    seconds = run_stages(write_project(project, planted, ["ingest", "clean"], workers=2), ["ingest", "clean"])
    paths = Paths(**{name: str(project / value) for name, value in Paths().model_dump().items()})
    flagged = pd.read_csv(paths.report_dir("clean") / "flagged.csv", keep_default_na=False)
    return flagged, sum(seconds.values())


def cleanvision(planted: Path, truth: pd.DataFrame) -> tuple[pd.DataFrame, dict, float]:
    """CleanVision's flags as a flagged.csv-like frame (source_path, reason), its other issue types'
    counts, and its seconds."""
    from cleanvision import Imagelab
    from PIL import Image

    given = truth[~truth["planted_reason"].isin(NOT_GIVEN)]
    modes = [Image.open(planted / "images" / p).mode for p in given["source_path"]]
    left_out = [p for p, mode in zip(given["source_path"], modes, strict=True) if mode == "LA"]
    given = given[~given["source_path"].isin(left_out)]
    files = [str(planted / "images" / p) for p in given["source_path"]]
    relative = dict(zip(files, given["source_path"], strict=True))
    unplanted = set(given.loc[given["planted_reason"] == CLEAN, "source_path"])
    label = dict(zip(given["source_path"], given["label"], strict=True))
    started = time.perf_counter()
    lab = Imagelab(filepaths=files, verbose=False)
    lab.find_issues(n_jobs=2, verbose=False)
    seconds = time.perf_counter() - started

    rows = []
    for issue, reason in SHARED.items():
        if issue == "low_information":
            hit = lab.issues.index[lab.issues[f"is_{issue}_issue"]]
            rows += [{"source_path": relative[f], "reason": reason} for f in hit]
            continue
        for members in lab.info.get(issue, {}).get("sets", []):
            members = [relative[f] for f in members]
            keep = next((m for m in members if m in unplanted), members[0])
            # copies under different labels: what clean calls a label_conflict
            here = "label_conflict" if len({label[m] for m in members}) > 1 else reason
            rows += [{"source_path": m, "reason": here} for m in members if m != keep]
    issues = lab.issues.rename(index=relative)
    outliers = set(given.loc[given["planted_reason"] == "outlier", "source_path"])
    other = {
        name: {
            "unplanted_flagged": int(issues.loc[issues.index.isin(unplanted), f"is_{name}_issue"].sum()),
            "unplanted": len(unplanted),
            "planted_outliers_flagged": int(issues.loc[issues.index.isin(outliers), f"is_{name}_issue"].sum()),
            "planted_outliers": len(outliers),
        }
        for name in OTHER
        if f"is_{name}_issue" in issues
    }
    other["left_out_crashing_files"] = left_out
    return pd.DataFrame(rows, columns=["source_path", "reason"]), other, seconds


def scored(truth: pd.DataFrame, flagged: pd.DataFrame) -> dict:
    frame = score(truth, flagged, [*SHARED.values(), "label_conflict"])
    return {
        row.reason: {
            "planted": int(row.planted),
            "flagged": int(row.flagged),
            "hits": int(row.hits),
            "recall": None if pd.isna(row.recall) else round(float(row.recall), 4),
            "precision": None if pd.isna(row.precision) else round(float(row.precision), 4),
        }
        for row in frame.itertuples()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanvision_engine", description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--per-fault", type=int, default=10)
    parser.add_argument("--part", choices=("train", "test"), default="test")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cleanvision_engine.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.seeds, args.per_fault = 300, "0", 2
        if args.out == parser.get_default("out"):
            args.out = Path(tempfile.gettempdir()) / "cleanvision_engine_quick.json"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore")

    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="cleanvision_") as tmp:
            planted, project = Path(tmp) / "planted", Path(tmp) / "project"
            project.mkdir()
            truth = plant(fashion_base(args.n, seed, args.part), planted, seed=seed, per_fault=args.per_fault)
            ours, own_seconds = own(planted, project)
            theirs, other, cv_seconds = cleanvision(planted, truth)
        per_seed[seed] = {
            "own": {"reasons": scored(truth, ours), "seconds": round(own_seconds, 1)},
            "cleanvision": {"reasons": scored(truth, theirs), "seconds": round(cv_seconds, 1), "other_issues": other},
        }
        print(f"seed {seed}: {per_seed[seed]}", flush=True)

    rows = []
    for seed, result in per_seed.items():
        for engine in ("own", "cleanvision"):
            for reason, r in result[engine]["reasons"].items():
                rows.append([seed, engine, reason, r["planted"], r["flagged"], r["recall"], r["precision"]])
    print(table(["seed", "engine", "reason", "planted", "flagged", "recall", "precision"], rows))
    write_result({"n": args.n, "part": args.part, "per_fault": args.per_fault, "per_seed": per_seed}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
