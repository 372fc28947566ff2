"""Scale-out benchmark: clean's inspection and augment's decode+resize on generated images, in-process
vs a LocalCluster with 1 and 2 worker processes (one thread each), through tasks.common.engine.

    python -m bench.scale [--images 20000] [--out bench/results/scale.json]

Images are 28x28 grayscale PNGs (Fashion-MNIST's size), blocky random shapes plus noise, written into
a content-addressed store under a temporary folder. The cluster start is timed apart from the work.
On a machine shared with other jobs the 1-vs-2 ratio is distorted; the JSON records the CPU count and
load average next to the timings."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.augment import decode_all
from tasks.clean import Params as CleanParams
from tasks.clean import inspect_all
from tasks.common import engine
from tasks.common.manifest import store_path


def make_store(root: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (4, 4), dtype=np.uint8)
        img = np.kron(blocks, np.ones((7, 7), np.uint8)).astype(np.int16) + rng.integers(-20, 21, (28, 28))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        data = buf.getvalue()
        image_id = hashlib.sha256(data).hexdigest()
        target = store_path(root, image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        ids.append(image_id)
    return sorted(set(ids))


def timed(cfg: engine.EngineParams, ids: list[str], store: Path) -> dict:
    out: dict = {}
    started = time.perf_counter()
    with contextlib_cluster(cfg) as address:
        out["cluster_start_s"] = round(time.perf_counter() - started, 2)
        run_cfg = cfg.model_copy(update={"address": address}) if address else cfg
        with engine.configured(run_cfg):
            t = time.perf_counter()
            inspections = inspect_all(ids, str(store), CleanParams())
            out["clean_inspect_s"] = round(time.perf_counter() - t, 2)
            arr = np.zeros((len(ids), 32, 32, 1), np.uint8)
            t = time.perf_counter()
            decode_all([store_path(store, i) for i in ids], 32, 1, arr)
            out["augment_decode_s"] = round(time.perf_counter() - t, 2)
    out["digest"] = hashlib.sha256(
        arr.tobytes() + "".join(inspections[i].pixel_hash for i in ids).encode()
    ).hexdigest()[:16]
    return out


class contextlib_cluster:
    """A LocalCluster of cfg.workers processes (None address for the in-process run)."""

    def __init__(self, cfg: engine.EngineParams) -> None:
        self.cfg, self.cluster = cfg, None

    def __enter__(self):
        if self.cfg.in_process_below > 0:
            return None
        import distributed

        self.cluster = distributed.LocalCluster(**engine.local_cluster_kwargs(self.cfg))
        with distributed.Client(self.cluster, set_as_default=False) as client:
            client.wait_for_workers(len(self.cluster.workers))
            client.run(_warm)  # worker imports counted as start-up, not as work
        return self.cluster.scheduler_address

    def __exit__(self, *exc):
        if self.cluster is not None:
            self.cluster.close()


def _warm() -> None:
    import tasks.augment  # noqa: F401
    import tasks.checks.quality  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--partition-size", type=int, default=512)
    parser.add_argument("--out", default="bench/results/scale.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        t = time.perf_counter()
        ids = make_store(store, args.images)
        generated = round(time.perf_counter() - t, 1)
        runs = {}
        for name, cfg in {
            "in_process": engine.EngineParams(in_process_below=10**9, partition_size=args.partition_size),
            "cluster_1_worker": engine.EngineParams(
                in_process_below=0, workers=1, memory_limit="2GiB", partition_size=args.partition_size
            ),
            "cluster_2_workers": engine.EngineParams(
                in_process_below=0, workers=2, memory_limit="2GiB", partition_size=args.partition_size
            ),
        }.items():
            load_before = os.getloadavg()[0]
            runs[name] = {**timed(cfg, ids, store), "load_avg_1min_before": round(load_before, 2)}
            print(name, runs[name], flush=True)
    one, two = runs["cluster_1_worker"], runs["cluster_2_workers"]
    work = lambda r: r["clean_inspect_s"] + r["augment_decode_s"]  # noqa: E731
    result = {
        "images": len(ids),
        "image": "28x28 gray PNG",
        "partition_size": args.partition_size,
        "generate_s": generated,
        "cpus_usable": engine.usable_cpus(),
        "machine": platform.platform(),
        "runs": runs,
        "speedup_2_vs_1_workers": round(work(one) / work(two), 2),
        "speedup_2_workers_vs_in_process": round(work(runs["in_process"]) / work(two), 2),
        "identical_results": len({r["digest"] for r in runs.values()}) == 1,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
