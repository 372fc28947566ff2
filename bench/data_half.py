"""The data half (ingest -> clean -> validate -> split) on real Fashion-MNIST at scale, cold and after
+1 % new images, and the same data on an older commit (issue 15's "at most half of the commit before").

    python -m bench.data_half [--images 70000] [--configs baseline,workers1,workers2]
                              [--stages ingest,clean] (a prefix of the four: the per-image stages alone)
                              [--baseline-commit ae41310] [--out bench/results/data_half.json]

Every stage runs as `python -m tasks.<stage> --params FILE` in its own process (as DVC runs it), so a
stage's seconds include its interpreter start, and the driver's peak RSS is that process's own
(RUSAGE_SELF at exit: Dask worker processes are not counted in it). Each configuration gets its own
project folder with the same source images:

- baseline: the code of --baseline-commit (extracted with `git archive`, same venv), its defaults;
- workersN: this checkout, engine.in_process_below 0 and engine.workers N (LocalCluster of N
  single-threaded processes, started by each stage that needs it);
- the last configuration is then given 1 % more images in its inbox and the four stages run again.

All images are Fashion-MNIST (train + test parts, classes as folders). The machine block records the
load average: on a machine shared with other jobs the figures are inflated."""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench import fashion
from bench.common import ratio, stage_seconds, table, write_result

STAGES = ("ingest", "clean", "validate", "split")
ROOT = Path(__file__).resolve().parent.parent
# Runs a stage module as `python -m` would, then reports this process's own peak RSS (KiB on Linux).
RUN_STAGE = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "stage, sys.argv = sys.argv[1], [sys.argv[1], '--params', sys.argv[2]]\n"
    "runpy.run_module('tasks.' + stage, run_name='__main__', alter_sys=True)\n"
)


def variant(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An augmented copy of a 28x28 Fashion-MNIST picture for the 500k run: a rotation of up to 15
    degrees, a crop of 80-100 % resized back, a mirror half of the time, brightness and contrast
    within 20 %. Mostly kept by clean (its near-duplicate check is not meant to catch crops and
    rotations: BENCHMARKS.md), so the data half does the work of as many distinct images."""
    img = Image.fromarray(image, mode="L").rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    side = int(rng.integers(23, 29))
    x, y = (int(v) for v in rng.integers(0, 29 - side, 2))
    img = img.crop((x, y, x + side, y + side)).resize((28, 28), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - arr.mean()) * rng.uniform(0.8, 1.2) + arr.mean() * rng.uniform(0.8, 1.2)
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_images(root: Path, total: int, extra: int, seed: int = 0) -> tuple[Path, Path]:
    """`total` Fashion-MNIST images (train then test part, a seeded draw) as PNGs: all but `extra` under
    root/source/<class>/, the rest under root/extra/<class>/ (the +1 % that arrives later). Beyond the
    70,000 real images, augmented variants of randomly drawn ones (`variant`), named <index>_v<k>.png."""
    train_x, train_y = fashion.load("train")
    test_x, test_y = fashion.load("test")
    images, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(labels))[:total]
    if total > len(picked):  # variants: drawn after the permutation, so the real images stay the same draw
        picked = np.concatenate([picked, rng.integers(0, len(labels), total - len(picked))])
    for n, i in enumerate(picked):
        folder = "extra" if n >= total - extra else "source"
        real = n < len(labels)
        name = f"{i:05d}.png" if real else f"{i:05d}_v{n}.png"
        target = root / folder / fashion.CLASSES[labels[i]] / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = images[i] if real else variant(images[i], np.random.default_rng([seed, n]))  # same on a rerun
            Image.fromarray(pixels, mode="L").save(target)
    return root / "source", root / "extra"


def extract_commit(commit: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as fh:
        fh.write(archive)
        fh.seek(0)
        with tarfile.open(fileobj=fh) as tar:
            tar.extractall(into, filter="data")
    return into


def write_params(code: Path, project: Path, source: Path, engine: dict | None) -> Path:
    """The code tree's own params.yaml with every path under `project`, the source folder and engine."""
    data = yaml.safe_load((code / "params.yaml").read_text(encoding="utf-8"))
    data["paths"] = {key: str(project / value) for key, value in data["paths"].items()}
    data["ingest"]["source"] = str(source)
    if engine is not None:
        data["engine"] = {**data.get("engine", {}), **engine}
    project.mkdir(parents=True, exist_ok=True)
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return params


def run_stage(code: Path, stage: str, params: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN_STAGE, stage, str(params)],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed ({done.returncode}) in {code}:\n{log[-3000:]}")
    rss = re.findall(r"PEAK_RSS_KIB (\d+)", log)
    return {
        "wall_s": round(wall, 2),
        "own_s": stage_seconds(log, stage),
        "peak_rss_mib": round(int(rss[-1]) / 1024) if rss else None,
        "load_1m_after": round(os.getloadavg()[0], 2),
    }


def run_half(code: Path, params: Path, label: str, names: tuple[str, ...] = STAGES) -> dict:
    stages = {}
    for stage in names:
        stages[stage] = run_stage(code, stage, params)
        print(label, stage, stages[stage], flush=True)
    return {
        "stages": stages,
        "total_wall_s": round(sum(s["wall_s"] for s in stages.values()), 2),
        "total_own_s": round(sum(s["own_s"] or 0 for s in stages.values()), 2),
        "driver_peak_rss_mib": max(s["peak_rss_mib"] or 0 for s in stages.values()),
    }


def add_inbox(extra: Path, project: Path) -> int:
    inbox = project / yaml.safe_load((project / "params.yaml").read_text())["paths"]["inbox"]  # may be relative
    count = 0
    for image in extra.rglob("*.png"):
        target = inbox / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
        count += 1
    return count


def flags(project: Path) -> dict:
    """Counts of the decisions a run made (to compare configurations)."""
    import pandas as pd

    out = {}
    for name in ("cleaned", "validated", "split"):
        manifest = project / "data" / "manifests" / f"{name}.parquet"
        if not manifest.is_file():  # --stages stopped before it
            continue
        frame = pd.read_parquet(manifest)
        out[name] = len(frame)
        for column in ("suspect_label", "near_duplicate_of"):
            if column in frame:
                out[f"{name}.{column}"] = int(frame[column].astype(bool).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_half", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=70000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--configs", default="baseline,workers1,workers2")
    parser.add_argument("--baseline-commit", default="ae41310")
    parser.add_argument(
        "--plus-new", default=None, help="configuration given the +1 %% (default: the last; none: skip)"
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="a prefix of the data half, e.g. ingest,clean (1 vs 2 workers)"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default="bench/results/data_half.json")
    args = parser.parse_args(argv)
    if args.work:
        return measure(args, args.work)
    # the default scratch folder holds 70k images and a project per configuration (about 0.7 GB): gone after
    with tempfile.TemporaryDirectory(prefix="imgcls_data_half_") as scratch:
        return measure(args, Path(scratch))


def measure(args: argparse.Namespace, work: Path) -> int:
    """The runs main() asked for, in the scratch folder `work`."""
    extra_count = max(1, round(args.images * args.new_fraction))
    t = time.perf_counter()
    source, extra = write_images(work / "images", args.images, extra_count)
    result: dict = {
        "images_cold": args.images - extra_count,
        "images_new": extra_count,
        "write_images_s": round(time.perf_counter() - t, 1),
        "baseline_commit": args.baseline_commit,
        "runs": {},
    }
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    names = tuple(n.strip() for n in args.stages.split(",") if n.strip())
    if names != STAGES[: len(names)]:
        raise SystemExit(f"--stages must be a prefix of {','.join(STAGES)}")
    result["stages"] = list(names)
    for name in configs:
        if name == "baseline":
            code, engine = extract_commit(args.baseline_commit, work / "baseline_code"), None
        else:
            code, engine = ROOT, {"in_process_below": 0, "workers": int(name.removeprefix("workers"))}
        project = work / f"project_{name}"
        params = write_params(code, project, source, engine)
        result["runs"][name] = {"engine": engine, "cold": run_half(code, params, name, names)}
        result["runs"][name]["flags"] = flags(project)
    last = args.plus_new or configs[-1]
    if last == "none":
        summarise(result, None)
        print(markdown(result))
        write_result(result, args.out)
        return 0
    project = work / f"project_{last}"
    add_inbox(extra, project)
    code = work / "baseline_code" if last == "baseline" else ROOT
    result["runs"][last]["plus_new"] = run_half(code, project / "params.yaml", f"{last}+new", names)
    result["runs"][last]["flags_plus_new"] = flags(project)
    summarise(result, last)
    print(markdown(result))
    write_result(result, args.out)
    print("peak RSS of this bench process (MiB):", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    return 0


def summarise(result: dict, last: str | None) -> None:
    """Ratios: +1 % over cold for the configuration `last` (None: no +1 % run), 2 vs 1 workers per
    stage, cold over the baseline."""
    runs, names = result["runs"], result["stages"]
    if last is not None:
        cold, new = runs[last]["cold"], runs[last]["plus_new"]
        result["plus_new_over_cold_own"] = ratio(new["total_own_s"], cold["total_own_s"])
        result["plus_new_over_cold_wall"] = ratio(new["total_wall_s"], cold["total_wall_s"])
    if "workers1" in runs and "workers2" in runs:
        result["speedup_2_vs_1_workers"] = {
            stage: ratio(
                runs["workers1"]["cold"]["stages"][stage]["own_s"], runs["workers2"]["cold"]["stages"][stage]["own_s"]
            )
            for stage in names
        }
    if "baseline" in runs and last not in (None, "baseline"):
        result["cold_over_baseline_wall"] = ratio(cold["total_wall_s"], runs["baseline"]["cold"]["total_wall_s"])


def markdown(result: dict) -> str:
    rows, names = [], result["stages"]
    for name, run in result["runs"].items():
        for phase in ("cold", "plus_new"):
            if phase in run:
                s = run[phase]["stages"]
                rows.append(
                    [f"{name} {phase}"]
                    + [f"{s[stage]['own_s']} ({s[stage]['wall_s']})" for stage in names]
                    + [run[phase]["total_wall_s"], run[phase]["driver_peak_rss_mib"]]
                )
    return table(["run", *[f"{s} own (wall) s" for s in names], "wall total s", "driver peak MiB"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
