"""Pipeline cost on the bundled sample (sklearn digits), in a throw-away git + DVC copy of this project:

1. cold `dvc repro` (every stage, timed one by one with --single-item), the issue's "< 3 min" goal;
2. no-op `dvc repro` (goal < 10 s);
3. 1% new images in the inbox, then `dvc repro` of ingest and clean (goal <= 10% of their cold time);
4. the Prefect flow (`imgcls run --force`, ephemeral API, DVC record included) vs the same eight
   stages called directly in one process (`tasks.<stage>.run`), on the same data and params.

    python -m bench.pipeline_cost            # params.yaml defaults
    python -m bench.pipeline_cost --quick    # 16 px, 2 epochs: a smoke run

Writes bench/results/pipeline_cost.json and prints a Markdown table."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import stage_seconds as own_seconds
from bench.common import write_result
from tasks.stages import STAGES
from tests.helpers.dvc_project import make_project, sh

QUICK = {"ingest": {"sample_upscale": 2}, "augment": {"image_size": 16}, "train": {"epochs": 2}}
DIRECT = (
    "import sys\n"
    "from tasks.common.params import load_stage\n"
    "from tasks.stages import STAGES\n"
    "for s in sys.argv[1:]:\n"
    "    params, paths = load_stage(s, 'params.yaml')\n"
    "    STAGES[s].run(params, paths)\n"
)


def timed(args: list[str], root: Path) -> tuple[float, str]:
    """(wall seconds, stdout + stderr)."""
    started = time.perf_counter()
    done = sh(args, root)
    return round(time.perf_counter() - started, 2), done.stdout + done.stderr


def stage_seconds(output: str, stage: str) -> float:
    """The stage's own time (bench.common.stage_seconds), NaN when it did not run."""
    seconds = own_seconds(output, stage)
    return float("nan") if seconds is None else seconds


def add_new_images(root: Path, count: int, seed: int = 0) -> None:
    """`count` new labelled digits-like images (class folders) in the ingest inbox."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for n, i in enumerate(rng.choice(len(digits.images), count, replace=False)):
        image = (digits.images[i] * 255 / 16).astype(np.uint8)
        image = np.clip(image.astype(int) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)  # new pixels
        folder = root / "data" / "inbox" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((32, 32), Image.NEAREST).save(folder / f"new_{n}.png")


def measure(root: Path, overrides: dict) -> dict:
    make_project(root, overrides)
    cold, cold_own = {}, {}
    for stage in STAGES:
        cold[stage], out = timed(["dvc", "repro", "--single-item", stage], root)
        cold_own[stage] = stage_seconds(out, stage)
    noop, out = timed(["dvc", "repro"], root)
    assert "Running stage" not in out, out

    images = 1797
    add_new_images(root, max(1, images // 100))
    rerun, rerun_own = {}, {}
    for stage in ("ingest", "clean"):
        rerun[stage], out = timed(["dvc", "repro", "--single-item", stage], root)
        rerun_own[stage] = stage_seconds(out, stage)

    flow, _ = timed([sys.executable, "-m", "flows.cli", "run", "--force"], root)
    direct, _ = timed([sys.executable, "-c", DIRECT, *STAGES], root)
    cold_ingest_clean = cold["ingest"] + cold["clean"]
    own_ingest_clean = cold_own["ingest"] + cold_own["clean"]
    return {
        "overrides": overrides,
        "images": images,
        "new_images": max(1, images // 100),
        "cold_seconds": cold,
        "cold_total": round(sum(cold.values()), 2),
        "noop_seconds": noop,
        "rerun_1pct_seconds": rerun,
        "rerun_over_cold_ingest_clean": round(sum(rerun.values()) / cold_ingest_clean, 3),
        # the same, counting only the stages' own work (tasks.common.entry's timing), without `dvc repro`'s
        # fixed cost per call (interpreter start, hashing the store before and after)
        "cold_stage_seconds": cold_own,
        "rerun_1pct_stage_seconds": rerun_own,
        "rerun_over_cold_own_work": round(sum(rerun_own.values()) / own_ingest_clean, 3),
        "flow_seconds": flow,
        "direct_seconds": direct,
        "flow_over_direct": round(flow / direct, 3),
    }


def markdown(r: dict) -> str:
    cold = ", ".join(f"{k} {v}" for k, v in r["cold_seconds"].items())
    return "\n".join(
        [
            "| measure | seconds | goal |",
            "|---|---|---|",
            f"| cold `dvc repro` (all stages) | {r['cold_total']} | < 180 |",
            f"| no-op `dvc repro` | {r['noop_seconds']} | < 10 |",
            f"| +1% images ({r['new_images']}): ingest + clean | {sum(r['rerun_1pct_seconds'].values()):.2f} "
            f"({r['rerun_over_cold_ingest_clean']:.1%} of cold) | <= 10% of cold |",
            f"| same, the stages' own work | {sum(r['rerun_1pct_stage_seconds'].values()):.2f} "
            f"({r['rerun_over_cold_own_work']:.1%} of cold) | <= 10% of cold |",
            f"| Prefect flow (`imgcls run --force`) | {r['flow_seconds']} | - |",
            f"| same stages called directly | {r['direct_seconds']} | - |",
            f"| flow / direct | {r['flow_over_direct']} | - |",
            "",
            f"cold per stage: {cold}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="16 px images, 2 epochs")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/pipeline_cost[_quick].json")
    args = parser.parse_args(argv)
    out = args.out or Path(f"bench/results/pipeline_cost{'_quick' if args.quick else ''}.json")
    with tempfile.TemporaryDirectory(prefix="pipeline_cost_") as tmp:
        result = measure(Path(tmp) / "proj", QUICK if args.quick else {})
    write_result(result, out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
