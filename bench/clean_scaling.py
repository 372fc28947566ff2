"""How the clean stage scales: real Fashion-MNIST images, nested random subsets of n, 2n and 4n,
each ingested into its own project first (ingest is not timed), then clean.run() timed with the
params.yaml defaults (workers aside), after one untimed warm-up clean of 50 images. A linear stage gives time(4n)/time(n) = 4 and a growth
exponent log(t4n/tn)/log 4 of 1; the goal is time(4n)/time(n) <= 5.

    python -m bench.clean_scaling [--n 5000] [--workers 2]
    python -m bench.clean_scaling --quick       # n=100"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import project_paths, ratio, run_stages, table, write_fashion_folder, write_params, write_result

GOAL = 5.0  # time(4n) / time(n)
WARMUP = 50  # images cleaned once, untimed, so module imports do not land on the n run


def subset_manifests(source: Path, sizes: list[int], seed: int) -> dict[int, Path]:
    """manifest_<k>.csv beside the images for each k: the first k files of one random order, so
    every smaller set is inside the larger ones."""
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png"))
    order = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    manifests = {}
    for k in sizes:
        manifests[k] = source / f"manifest_{k}.csv"
        pd.DataFrame({"path": order[:k], "label": [f.split("/", 1)[0] for f in order[:k]]}).to_csv(
            manifests[k], index=False
        )
    return manifests


def clean_seconds(root: Path, manifest: Path, workers: int) -> dict:
    params_file = write_params(root, {"ingest": {"source": str(manifest)}, "clean": {"workers": workers}})
    run_stages(params_file, ["ingest"])
    seconds = run_stages(params_file, ["clean"])["clean"]
    kept = len(pd.read_parquet(project_paths(root).cleaned))
    return {"seconds": seconds, "kept": kept}


def measure(n: int, workers: int, seed: int, workdir: Path) -> dict:
    sizes = [n, 2 * n, 4 * n]
    source = write_fashion_folder(workdir / "source", 4 * n, seed)
    manifests = subset_manifests(source, [WARMUP] + sizes, seed)
    clean_seconds(workdir / "warmup", manifests.pop(WARMUP), workers)  # first-call imports, untimed
    runs = {}
    for k, manifest in manifests.items():
        started = time.perf_counter()
        runs[k] = clean_seconds(workdir / f"project_{k}", manifest, workers)
        runs[k]["images_per_s"] = round(k / runs[k]["seconds"], 1)
        print(f"n={k}: clean {runs[k]['seconds']} s ({time.perf_counter() - started:.1f} s with ingest)", flush=True)
    t1, t4 = runs[n]["seconds"], runs[4 * n]["seconds"]
    return {
        "settings": {"n": n, "workers": workers, "seed": seed},
        "runs": {str(k): {"images": k, **v} for k, v in runs.items()},
        "time_ratio_4n_n": ratio(t4, t1),
        "growth_exponent": round(math.log(t4 / t1) / math.log(4), 3),
        "goal": GOAL,
    }


def markdown(result: dict) -> str:
    rows = [[r["images"], r["seconds"], r["images_per_s"], r["kept"]] for r in result["runs"].values()]
    return (
        f"clean on Fashion-MNIST subsets, {result['settings']['workers']} worker(s)\n\n"
        + table(["images", "clean s", "images/s", "kept"], rows)
        + f"\n\ntime(4n)/time(n): {result['time_ratio_4n_n']:.2f} (goal <= {GOAL}); "
        f"growth exponent: {result['growth_exponent']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.clean_scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="smallest set (default 5000; 4n <= 60000)")
    parser.add_argument("--workers", type=int, default=2, help="clean's decoding processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="n=100: a smoke run for tests")
    parser.add_argument("--out", type=Path, default=Path("bench/results/clean_scaling.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 100
    with tempfile.TemporaryDirectory(prefix="clean_scaling_") as tmp:
        result = measure(args.n, args.workers, args.seed, Path(tmp))
    write_result(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
