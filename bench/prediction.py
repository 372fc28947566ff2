"""Prediction speed through the MLflow pyfunc model on CPU: single-image latency (p50/p99 of
one-row DataFrames holding base64 PNG bytes, as a REST request would) and batch throughput
(DataFrames of `--batch` rows), plus the bare network forward on an already decoded image, to show
what the pyfunc wrapper (decode, resize, normalize, DataFrame, schema check) adds.

The model is `--model URI` (anything mlflow.pyfunc.load_model takes), or resnet_small trained
briefly here on a Fashion-MNIST prepared store and saved with models.pyfunc.save_pyfunc (the
train stage's export). Each `--threads` value is measured in turn (0: torch's default).

    python -m bench.prediction [--model URI] [--requests 500] [--threads 1 0]
    python -m bench.prediction --quick"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import build_prepared, plain_training_steps, table, write_result

GOAL_P50_MS = 10.0


def train_briefly(prepared: Path, steps: int, target: Path) -> str:
    """resnet_small after `steps` AdamW steps on the store's train split, saved as a pyfunc model."""
    import lightning as L
    import torch

    from models.data import PreparedDataModule
    from models.networks import build_network
    from models.predictor import save_model_files
    from models.pyfunc import save_pyfunc
    from tasks.train import CPU_BATCH
    from tasks.train import Params as TrainParams

    tp = TrainParams(batch_size=CPU_BATCH)
    L.seed_everything(tp.seed, verbose=False)
    data = PreparedDataModule(prepared, min(tp.batch_size, len_train(prepared)), 0, tp.seed)
    network = build_network(tp.network, len(data.classes), int(data.stats["channels"]))
    optimizer = torch.optim.AdamW(network.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    for _ in plain_training_steps(network, data.train_dataloader(), optimizer, tp.label_smoothing, steps):
        pass
    network.eval()
    example = np.load(prepared / "images.npy", mmap_mode="r")[int(data.val_index["row"].iloc[0])]
    files = save_model_files(target / "files", tp.network, network, data.classes, data.stats)
    save_pyfunc(target / "model", files, np.array(example))
    return str(target / "model")


def len_train(prepared: Path) -> int:
    import pandas as pd

    return int((pd.read_parquet(prepared / "index.parquet")["split"] == "train").sum())


def request_images(prepared: Path, count: int) -> list[str]:
    """base64 PNG bytes of the store's test images (cycled when there are fewer)."""
    import pandas as pd
    from PIL import Image

    index = pd.read_parquet(prepared / "index.parquet")
    rows = index.loc[index["split"] == "test", "row"].to_numpy()[:count]
    images = np.load(prepared / "images.npy", mmap_mode="r")
    encoded = []
    for row in rows:
        image = np.array(images[row])
        buf = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return [encoded[i % len(encoded)] for i in range(count)]


def percentiles(ms: list[float]) -> dict:
    values = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "mean_ms": round(float(values.mean()), 3),
    }


def measure_threads(model, images: list[str], requests: int, batch: int, rounds: int, warmup: int) -> dict:
    import pandas as pd

    from tasks.common.images import decode, to_array

    predictor = model.unwrap_python_model().predictor
    single = [pd.DataFrame({"image": [img]}) for img in images[:requests]]
    for frame in single[:warmup]:
        model.predict(frame)
    latencies = []
    for frame in single:
        started = time.perf_counter()
        model.predict(frame)
        latencies.append((time.perf_counter() - started) * 1000)

    array = to_array(decode(base64.b64decode(images[0])), predictor.image_size, predictor.channels)[None]
    for _ in range(warmup):
        predictor.predict_proba(array)
    network = []
    for _ in range(requests):
        started = time.perf_counter()
        predictor.predict_proba(array)
        network.append((time.perf_counter() - started) * 1000)

    frame = pd.DataFrame({"image": [images[i % len(images)] for i in range(batch)]})
    model.predict(frame)
    started = time.perf_counter()
    for _ in range(rounds):
        out = model.predict(frame)
    seconds = time.perf_counter() - started
    assert (out["error"] == "").all(), out["error"].unique()
    return {
        "single": {"requests": len(latencies), **percentiles(latencies)},
        "network_only": {"requests": len(network), **percentiles(network)},
        "batch": {"batch_size": batch, "rounds": rounds, "images_per_s": round(batch * rounds / seconds, 1)},
    }


def markdown(result: dict) -> str:
    rows = []
    for threads, r in result["threads"].items():
        rows.append(
            [
                threads,
                r["single"]["p50_ms"],
                r["single"]["p99_ms"],
                r["network_only"]["p50_ms"],
                r["batch"]["images_per_s"],
                "met" if r["single"]["p50_ms"] < GOAL_P50_MS else "missed",
            ]
        )
    return f"pyfunc model {result['settings']['model']}, CPU\n\n" + table(
        [
            "torch threads",
            "single p50 ms",
            "single p99 ms",
            "network-only p50 ms",
            f"batch {result['settings']['batch']} images/s",
            f"p50 < {GOAL_P50_MS:g} ms",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prediction", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="pyfunc model URI (default: train one briefly here)")
    parser.add_argument("--n", type=int, default=3000, help="Fashion-MNIST images for the store (default 3000)")
    parser.add_argument("--prepared", type=Path, default=None, help="use this prepared store instead of building one")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="single-image requests timed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="batch requests timed")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="torch threads to measure (0: default)")
    parser.add_argument("--quick", action="store_true", help="n=300, 2 training steps, 30 requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results/prediction.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.train_steps, args.requests, args.batch, args.rounds = 300, 2, 30, 32, 2
    import mlflow.pyfunc
    import torch

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="prediction_") as tmp:
        prepared = args.prepared or build_prepared(Path(tmp) / "data", args.n, workers=1 if args.quick else 2)
        uri = args.model or train_briefly(prepared, args.train_steps, Path(tmp))
        model = mlflow.pyfunc.load_model(uri)
        images = request_images(prepared, max(args.requests, args.batch))
        measured = {}
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            measured[str(torch.get_num_threads())] = measure_threads(
                model, images, args.requests, args.batch, args.rounds, warmup=min(20, args.requests)
            )
        torch.set_num_threads(default_threads)
    result = {
        "settings": {
            "model": args.model or f"resnet_small, {args.train_steps} training steps",
            "input": "base64 PNG in a one-row DataFrame",
            "batch": args.batch,
            "torch_default_threads": default_threads,
            "n": None if args.prepared else args.n,
        },
        "threads": measured,
        "goal_p50_ms": GOAL_P50_MS,
    }
    write_result(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
