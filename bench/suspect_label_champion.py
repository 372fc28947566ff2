"""A second opinion from the champion: does averaging the registered champion into validate's scores of
the images new since its last fit find more of their flipped labels? (tasks/checks/champion_scores.py)

A real project on a draw of Fashion-MNIST's `part`: `base` images with 3 % of their labels flipped (half to
a uniformly chosen other class, half to the confusable class: bench.suspect_label_epochs.flipped_labels) go through
every stage, ingest to promote (a first model: the champion; promote.floor 0.5 so a 4,000-image model
can be one). Then `new` images arrive with `new_flips` of their labels flipped the same way, and ingest,
clean and validate run again: validate scores them with its last fit's fold models, once averaged with
the champion (the default) and once without it (`suspect_label.champion: null`, from the same cache).
Reported over the new images: flips found / flagged, and the average precision of the given-label ranking.

    python -m bench.suspect_label_champion [--part test] [--seed 0] [--base 5000] [--new 450] [--new-flips 0.1]"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import fashion
from bench.common import project_paths, run_stages, write_params, write_result
from bench.planted import nearest_classes
from bench.suspect_label_epochs import flipped_labels

BASE_STAGES = ["ingest", "clean", "validate", "split", "augment", "train", "evaluate", "promote"]


def write_images(source: Path, images: np.ndarray, indices: np.ndarray, given: np.ndarray) -> None:
    for i, label in zip(indices, given):
        target = source / fashion.CLASSES[label] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(target)


def scored_new(paths, truth: dict[str, tuple[int, int]]) -> dict:
    """Flips found / flagged among the new images (truth: source path -> (true, given) label index)."""
    from sklearn.metrics import average_precision_score

    validated = pd.read_parquet(paths.validated)
    new = validated[validated["source_path"].isin(truth)]
    flipped = np.array([truth[p][0] != truth[p][1] for p in new["source_path"]])
    flagged = new["suspect_label"].to_numpy(dtype=bool)
    return {
        "new_images_scored": len(new),
        "flips": int(flipped.sum()),
        "flagged": int(flagged.sum()),
        "found": int((flagged & flipped).sum()),
        "average_precision": round(float(average_precision_score(flipped, -new["given_probability"])), 4),
    }


def measure(part: str, seed: int, base: int, new: int, new_flips: float, root: Path) -> dict:
    images, labels = fashion.load(part)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), base + new, replace=False)
    base_at, new_at = np.sort(pick[:base]), np.sort(pick[base:])
    names = {k: name for k, name in enumerate(fashion.CLASSES)}
    by_name = nearest_classes([(images[i], names[labels[i]]) for i in base_at])
    confusable = {k: fashion.CLASSES.index(by_name[name]) for k, name in names.items()}
    n_classes = len(fashion.CLASSES)
    base_given = flipped_labels(labels[base_at], 0.03, rng, confusable, n_classes)[0]
    new_given = flipped_labels(labels[new_at], new_flips, rng, confusable, n_classes)[0]

    source = root / "source"
    write_images(source, images, base_at, base_given)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    sections = {
        "ingest": {"source": str(source)},
        "augment": {"image_size": 28},
        "evaluate": {"baseline": {"enabled": False}},
        "promote": {"floor": 0.5},
    }
    params_file = write_params(root / "project", sections)
    base_seconds = run_stages(params_file, BASE_STAGES)

    write_images(source, images, new_at, new_given)
    run_stages(params_file, ["ingest", "clean"])
    paths = project_paths(root / "project")
    cache_copy = root / "cache_before_new"
    shutil.copytree(paths.cache, cache_copy)
    truth = {
        f"{fashion.CLASSES[g]}/{i:05d}.png": (int(t), int(g)) for i, t, g in zip(new_at, labels[new_at], new_given)
    }
    rows = {}
    for name, champion in (("fold models + champion", "imgcls"), ("fold models only", None)):
        shutil.rmtree(paths.cache)
        shutil.copytree(cache_copy, paths.cache)
        with_setting = write_params(
            root / "project", {**sections, "validate": {"suspect_label": {"champion": champion}}}
        )
        started = time.perf_counter()
        run_stages(with_setting, ["validate"])
        summary = (paths.report_dir("validate") / "summary.md").read_text(encoding="utf-8")
        rows[name] = scored_new(paths, truth) | {
            "validate_seconds": round(time.perf_counter() - started, 1),
            "how": next((line.strip() for line in summary.splitlines() if "new images with the" in line), ""),
        }
    return {
        "part": part,
        "seed": seed,
        "base": base,
        "new": new,
        "new_flips": new_flips,
        "base_stage_seconds": base_seconds,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suspect_label_champion", description=__doc__)
    parser.add_argument("--part", choices=("train", "test"), default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=int, default=5000)
    parser.add_argument("--new", type=int, default=450)  # under refit_growth 0.1 of the base
    parser.add_argument("--new-flips", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/suspect_label_champion.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="champion_bench_") as tmp:
        result = measure(args.part, args.seed, args.base, args.new, args.new_flips, Path(tmp))
    for name, row in result["rows"].items():
        print(f"{name}: {row}")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
