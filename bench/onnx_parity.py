"""PyTorch vs ONNX Runtime on CPU, in one run: the exported graph (models/onnx_export.py) against
Predictor.predict_proba, both fed the same decoded uint8 NHWC arrays of the prepared store's test
split. Per-image latency (p50/p99, one image per call, the two paths alternating call by call so
that load on a shared machine hits both alike), batch throughput, their ratios, and the parity
figures `imgcls export` checks (max |probability difference|, label agreement).

The model is `--model` (anything flows.export accepts: a saved pyfunc folder, models:/NAME@ALIAS,
a checkpoint) with `--prepared DIR` (its prepared store); or, by default, resnet_small trained for
`--train-steps` steps here on a prepared store that the real data stages build from the bundled
digits sample (`--dataset digits`) or from Fashion-MNIST (`--dataset fashion`, needs Debian's
dataset-fashion-mnist). torch and onnxruntime get the same thread count (`--threads`).

    python -m bench.onnx_parity [--model URI --prepared DIR] [--threads 1 2] [--requests 500]
    python -m bench.onnx_parity --quick"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    DATA_STAGES,
    build_prepared,
    project_paths,
    ratio,
    run_stages,
    table,
    write_params,
    write_result,
)


def digits_prepared(root: Path) -> Path:
    """The bundled digits sample through ingest -> augment with params.yaml defaults."""
    run_stages(write_params(root, {"ingest": {"source": "sample:digits"}}), DATA_STAGES)
    return Path(project_paths(root).prepared)


def percentiles(ms: list[float]) -> dict:
    values = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(values, 50)), 4), "p99_ms": round(float(np.percentile(values, 99)), 4)}


def measure(predictor, sess, images: np.ndarray, requests: int, batch: int, rounds: int, warmup: int) -> dict:
    from models.onnx_export import INPUT_NAME, OUTPUT_NAME

    singles = [images[i % len(images)][None] for i in range(requests)]
    for x in singles[:warmup]:
        predictor.predict_proba(x)
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    torch_ms, onnx_ms = [], []
    for i, x in enumerate(singles):  # alternate which path goes first
        for path in (0, 1) if i % 2 == 0 else (1, 0):
            started = time.perf_counter()
            if path == 0:
                predictor.predict_proba(x)
            else:
                sess.run([OUTPUT_NAME], {INPUT_NAME: x})
            (torch_ms if path == 0 else onnx_ms).append((time.perf_counter() - started) * 1000)

    chunk = np.ascontiguousarray(np.stack([images[i % len(images)] for i in range(batch)]))
    predictor.predict_proba(chunk)
    sess.run([OUTPUT_NAME], {INPUT_NAME: chunk})
    seconds = [0.0, 0.0]
    for r in range(rounds):
        for path in (0, 1) if r % 2 == 0 else (1, 0):
            started = time.perf_counter()
            if path == 0:
                predictor.predict_proba(chunk)
            else:
                sess.run([OUTPUT_NAME], {INPUT_NAME: chunk})
            seconds[path] += time.perf_counter() - started
    torch_single, onnx_single = percentiles(torch_ms), percentiles(onnx_ms)
    torch_tput, onnx_tput = batch * rounds / seconds[0], batch * rounds / seconds[1]
    return {
        "single": {
            "requests": requests,
            "torch": torch_single,
            "onnxruntime": onnx_single,
            "p50_onnx_over_torch": ratio(onnx_single["p50_ms"], torch_single["p50_ms"]),
        },
        "batch": {
            "batch_size": batch,
            "rounds": rounds,
            "torch_images_per_s": round(torch_tput, 1),
            "onnxruntime_images_per_s": round(onnx_tput, 1),
            "onnx_over_torch": ratio(onnx_tput, torch_tput),
        },
    }


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = []
    for threads, r in result["threads"].items():
        single, batch = r["single"], r["batch"]
        rows.append(
            [
                threads,
                single["torch"]["p50_ms"],
                single["onnxruntime"]["p50_ms"],
                single["p50_onnx_over_torch"],
                batch["torch_images_per_s"],
                batch["onnxruntime_images_per_s"],
                batch["onnx_over_torch"],
            ]
        )
    p = result["parity"]
    return (
        f"{s['model']}, {s['input']}, CPU; parity on {p['images']} test images: max |prob diff| "
        f"{p['max_abs_diff']:.2g}, labels agree {p['label_agreement']:.2%}; export {result['export_seconds']} s\n\n"
        + table(
            [
                "threads",
                "torch p50 ms",
                "ORT p50 ms",
                "ORT/torch p50",
                f"torch batch {s['batch']} img/s",
                f"ORT batch {s['batch']} img/s",
                "ORT/torch throughput",
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.onnx_parity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model URI or folder (default: train one briefly here)")
    parser.add_argument("--prepared", type=Path, default=None, help="its prepared store (default: build one)")
    parser.add_argument("--dataset", choices=["digits", "fashion"], default="digits")
    parser.add_argument("--n", type=int, default=3000, help="Fashion-MNIST images for the store")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="single-image calls timed per path")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10, help="batch calls timed per path")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads for both paths")
    parser.add_argument("--quick", action="store_true", help="2 training steps, 50 requests, batch 32")
    parser.add_argument("--out", type=Path, default=Path("bench/results/onnx_parity.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.requests, args.batch, args.rounds = 2, 50, 32, 3
    if args.model and not args.prepared:
        parser.error("--model needs --prepared (the store its test split comes from)")
    import torch

    from bench.prediction import train_briefly
    from flows.export import local_model, registry_version, split_images
    from models.onnx_export import export_onnx, parity, session
    from models.predictor import load_predictor

    with tempfile.TemporaryDirectory(prefix="onnx_parity_") as tmp:
        tmp = Path(tmp)
        prepared = args.prepared or (
            digits_prepared(tmp / "project") if args.dataset == "digits" else build_prepared(tmp / "data", args.n)
        )
        uri = args.model or train_briefly(prepared, args.train_steps, tmp)
        predictor = load_predictor(local_model(uri, registry_version(uri), str(tmp / "download")))
        images = split_images(prepared, predictor.image_size, predictor.channels)
        started = time.perf_counter()
        onnx_file = export_onnx(predictor, tmp / "model.onnx")
        export_seconds = round(time.perf_counter() - started, 2)
        checked = parity(predictor, session(onnx_file), images)
        measured = {}
        default_threads = torch.get_num_threads()
        for threads in args.threads:
            torch.set_num_threads(threads)
            measured[str(threads)] = measure(
                predictor,
                session(onnx_file, threads=threads),
                images,
                args.requests,
                args.batch,
                args.rounds,
                warmup=min(20, args.requests),
            )
        torch.set_num_threads(default_threads)
        onnx_bytes = onnx_file.stat().st_size
    import onnxruntime

    network = predictor.stats.get("network") or type(predictor.network).__name__
    source = f"prepared store {args.prepared}" if args.prepared else args.dataset
    result = {
        "settings": {
            "model": args.model or f"resnet_small ({source}), {args.train_steps} training steps",
            "network": network,
            "input": f"uint8 1x{predictor.image_size}x{predictor.image_size}x{predictor.channels} arrays (decoded)",
            "test_time_flip": predictor.test_time_flip,
            "batch": args.batch,
            "onnxruntime": onnxruntime.__version__,
            "onnx_file_bytes": onnx_bytes,
        },
        "export_seconds": export_seconds,
        "parity": checked,
        "threads": measured,
    }
    write_result(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
