"""OpenCV's threads in the DataLoader workers: images/s out of the train DataLoader of a prepared
store (memmap read + augment.json + collate, pinned where a GPU is) with each worker's OpenCV pool at
OpenCV's default (one thread per core) against one thread (models/data.py's WORKER_OPENCV_THREADS),
alternating runs, first batch (worker start) excluded.

    python -m bench.loader_threads --prepared DIR --num-workers 12 --batch-size 512 --out R.json"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.common import machine, ratio, write_result
from bench.data_path import loader_rate
from tasks import train

VARIANTS = {"opencv_default": -1, "opencv_one": 1}  # cv2.setNumThreads(-1) restores OpenCV's default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loader_threads", description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=40, help="batches timed per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import models.data

    tp = train.Params(batch_size=args.batch_size, num_workers=args.num_workers, accelerator=args.accelerator)
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    default = models.data.WORKER_OPENCV_THREADS
    try:
        for _ in range(args.repeats):
            for name, threads in VARIANTS.items():
                models.data.WORKER_OPENCV_THREADS = threads  # read by seed_worker in each (forked) worker
                runs[name].append(loader_rate(args.prepared, tp, args.batches)["images_per_s"])
                print(name, runs[name][-1], flush=True)
    finally:
        models.data.WORKER_OPENCV_THREADS = default
    medians = {name: statistics.median(rates) for name, rates in runs.items()}
    result = {
        "machine": machine(),
        "settings": vars(args) | {"prepared": str(args.prepared), "out": str(args.out)},
        "images_per_s": runs,
        "median_images_per_s": medians,
        "one_thread_over_default": ratio(medians["opencv_one"], medians["opencv_default"]),
    }
    write_result(result, args.out)
    print(result["median_images_per_s"], result["one_thread_over_default"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
