"""The data half through `dvc repro`, cold and after +1 % new images (issue 15: "wall time including
DVC ≤ 20 % of cold"), on real Fashion-MNIST.

    python -m bench.data_half_dvc [--images 70000] [--new-fraction 0.01] [--out bench/results/data_half_dvc.json]

A DVC project is made from this checkout's committed code (`git archive HEAD`, the venv linked in),
its params.yaml defaults (the embedded engine: a LocalCluster sized to the machine above
engine.in_process_below) with ingest.source pointing at the images. `dvc repro split` runs
ingest -> clean -> validate -> split cold; then 1 % more images land in data/inbox and the same command
runs again; then once more with nothing new (no-op). Each figure is the wall time of the whole
`dvc repro` command (DVC's hashing of the store and manifests included) and the stages' own seconds
from their `[stage] finished in` lines."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import ratio, stage_seconds, write_result
from bench.data_half import ROOT, STAGES, add_inbox, extract_commit, flags, write_images


def make_project(work: Path, source: Path) -> Path:
    project = extract_commit("HEAD", work / "dvc_project")
    (project / ".venv").symlink_to(ROOT / ".venv")
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["ingest"]["source"] = str(source)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)  # .dvc/ comes with the code
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=project)
    return project


def repro(project: Path, label: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv/bin/dvc"), "repro", "split"], cwd=project, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed ({done.returncode}):\n{log[-3000:]}")
    own = {stage: seconds for stage in STAGES if (seconds := stage_seconds(log, stage)) is not None}
    run = {"wall_s": round(wall, 2), "own_s": own, "total_own_s": round(sum(own.values()), 2)}
    print(label, run, flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_half_dvc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=70000)
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default="bench/results/data_half_dvc.json")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="imgcls_data_half_dvc_"))
    extra_count = max(1, round(args.images * args.new_fraction))
    source, extra = write_images(work / "images", args.images, extra_count)
    project = make_project(work, source)
    result: dict = {"images_cold": args.images - extra_count, "images_new": extra_count}
    result["cold"] = repro(project, "cold")
    result["flags_cold"] = flags(project)
    add_inbox(extra, project)
    result["plus_new"] = repro(project, "+new")
    result["flags_plus_new"] = flags(project)
    result["no_op"] = repro(project, "no-op")
    result["plus_new_over_cold_wall"] = ratio(result["plus_new"]["wall_s"], result["cold"]["wall_s"])
    result["plus_new_over_cold_own"] = ratio(result["plus_new"]["total_own_s"], result["cold"]["total_own_s"])
    write_result(result, args.out)
    print({k: result[k] for k in ("plus_new_over_cold_wall", "plus_new_over_cold_own")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
