"""`imgcls serve` under load, and its guards while loaded: a real server (the `imgcls serve` command in
a uvicorn subprocess on 127.0.0.1) around a small real model (resnet_small trained for a few epochs
here by the train stage on a generated prepared store), with the drift input log on, as in production.

1. load: `--requests` POST /predict from `--concurrency` concurrent clients (httpx.AsyncClient, one
   connection each), images drawn from the store's test split and re-encoded as PNG at their raw size
   plus a few odd sizes; the rate limit raised through `--rate-limit/--rate-burst` so the limiter stays
   in the path but never answers 429. Errors (anything but 200, or no answer) must be 0. Latency
   p50/p95/p99 per request (client side, connection reused), throughput = requests / wall time, the
   machine's load average sampled every second, and the input log checked to hold one record per
   request (then read back by `imgcls drift`).
2. writers: POST /feedback without a token and with a wrong one (401), and on a server with no token
   configured (403).
3. body limit: a `--upload-gb` chunked upload (no Content-Length) to /predict, sent by a generator
   that counts what it hands to the client: the answer must be 413, and the bytes sent are compared
   with the limit + one chunk (plus what the kernel's socket buffers can hold on loopback).
4. rate limit at the default (--rate-limit 20 --rate-burst 40): `--burst-requests` from one address as
   fast as possible; some must be answered 429 (with Retry-After).

    python -m bench.load_test [--requests 2000 --concurrency 8 --upload-gb 2] [--out bench/results/load_test.json]
    python -m bench.load_test --quick"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.common import table, write_result

ROOT = Path(__file__).resolve().parents[1]
# the installed `imgcls` entry point beside this interpreter (python -m flows.cli where there is none)
IMGCLS = (
    [str(Path(sys.executable).with_name("imgcls"))]
    if Path(sys.executable).with_name("imgcls").exists()
    else [sys.executable, "-m", "flows.cli"]
)
TOKEN = "load-test-token-0123456789abcdef"
CHUNK = 1 << 20
DEFAULT_RATE, DEFAULT_BURST = 20.0, 40  # imgcls serve's defaults


# --------------------------------------------------------------------------------------------- setup


def train_model(root: Path, epochs: int) -> tuple[str, dict, Path, Path]:
    """resnet_small trained by the train stage on a generated prepared store (tests.helpers: dark /
    mid / bright pictures); returns (model URI, tracking env, params file for the CLI, prepared store).
    Runs with `root` as the working directory, so every relative default path lands there."""
    import yaml

    from tasks.train import Params, run
    from tests.helpers.prepared_store import make_project

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    os.environ.update(env)
    paths = make_project(root / "project", per_split={"train": 40, "val": 8, "test": 20}, size=32)
    paths = paths.model_copy(update={"feedback": str(root / "feedback"), "cache": str(root / "cache")})
    summary = run(Params(epochs=epochs, batch_size=16, lr=0.01, num_workers=0), paths)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": paths.model_dump()}, sort_keys=False), encoding="utf-8")
    return summary["model_uri"], env, params, Path(paths.prepared)


def request_images(prepared: Path, count: int) -> list[bytes]:
    """PNG bytes of the store's test images: most at the stored size, every fifth upscaled (the model
    resizes whatever it is sent), cycled to `count` distinct-enough uploads."""
    import pandas as pd
    from PIL import Image

    index = pd.read_parquet(prepared / "index.parquet")
    images = np.load(prepared / "images.npy", mmap_mode="r")
    rows = index.loc[index["split"] == "test", "row"].to_numpy()
    out = []
    for i in range(min(count, 200)):
        img = Image.fromarray(np.asarray(images[rows[i % len(rows)]])[:, :, 0])
        if i % 5 == 4:
            img = img.resize((96, 80))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(model_uri: str, params: Path, env: dict, log: Path, extra: list[str], token: str | None):
    """`imgcls serve` in a subprocess on a free port of 127.0.0.1; yields its base URL once /health answers."""
    import httpx

    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "IMGCLS_FEEDBACK_TOKEN"} | env
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    if token:
        environ["IMGCLS_FEEDBACK_TOKEN"] = token
    cmd = [
        *IMGCLS,
        "serve",
        "--params",
        str(params),
        "--model",
        model_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=params.parent, env=environ, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"imgcls serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"imgcls serve did not answer /health in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoadSampler:
    """The 1-minute load average every second while running (the machine is shared)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = np.array(self.samples or [os.getloadavg()[0]])
        return {
            "start": round(float(s[0]), 2),
            "end": round(float(s[-1]), 2),
            "max": round(float(s.max()), 2),
            "mean": round(float(s.mean()), 2),
        }


# --------------------------------------------------------------------------------------------- phases


async def _load(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    next_index = 0

    async def client_loop():
        nonlocal next_index
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as http:
            while next_index < requests:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                try:
                    r = await http.post("/predict", files={"image": (f"{i}.png", images[i % len(images)], "image/png")})
                    key = str(r.status_code)
                    if r.status_code != 200 and len(errors) < 10:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    if len(errors) < 10:
                        errors.append(f"{key}: {exc}")
                latencies.append(time.perf_counter() - started)
                statuses[key] = statuses.get(key, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "statuses": statuses,
        "errors": requests - statuses.get("200", 0),
        "error_examples": errors,
        "wall_s": round(wall, 2),
        "throughput_rps": round(requests / wall, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p95": round(float(np.percentile(ms, 95)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "mean": round(float(ms.mean()), 1),
            "max": round(float(ms.max()), 1),
        },
    }


def writers(url: str, image: bytes) -> dict:
    import httpx

    out = {}
    for name, headers in (("no_token", {}), ("wrong_token", {"Authorization": "Bearer not-the-right-token-xxxxxxxx"})):
        r = httpx.post(
            url + "/feedback",
            files={"image": ("x.png", image, "image/png")},
            data={"label": "dark"},
            headers=headers,
            timeout=30,
        )
        out[name] = r.status_code
    return out


def big_upload(url: str, total: int, limit: int) -> dict:
    """A chunked multipart upload of `total` bytes; what was sent before the server's answer."""
    import httpx

    sent = {"bytes": 0}
    boundary = "loadtestboundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        block = b"\x89PNG" + b"0" * (CHUNK - 4)
        while sent["bytes"] < total:
            sent["bytes"] += CHUNK
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    started = time.perf_counter()
    try:
        r = httpx.post(
            url + "/predict",
            content=body(),
            timeout=120,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        status, detail = r.status_code, r.text[:200]
        chunked = "content-length" not in {k.lower() for k in r.request.headers}
    except httpx.HTTPError as exc:
        status, detail, chunked = type(exc).__name__, str(exc)[:200], True
    buffers = socket_buffers()
    return {
        "offered_bytes": total,
        "status": status,
        "detail": detail,
        "chunked": chunked,
        "body_limit_bytes": limit,
        "chunk_bytes": CHUNK,
        "sent_bytes": sent["bytes"],
        "sent_over_limit_bytes": sent["bytes"] - limit,
        "within_limit_plus_one_chunk": sent["bytes"] <= limit + CHUNK,
        "within_limit_plus_chunk_plus_socket_buffers": sent["bytes"] <= limit + CHUNK + buffers["max_total"],
        "socket_buffers": buffers,
        "seconds": round(time.perf_counter() - started, 2),
    }


def socket_buffers() -> dict:
    """Loopback TCP buffer maxima: bytes the client can hand to the kernel that the server never read."""

    def third(path):
        try:
            return int(Path(path).read_text().split()[2])
        except (OSError, IndexError, ValueError):
            return 0

    w, r = third("/proc/sys/net/ipv4/tcp_wmem"), third("/proc/sys/net/ipv4/tcp_rmem")
    return {"tcp_wmem_max": w, "tcp_rmem_max": r, "max_total": w + r}


async def _burst(url: str, n: int, concurrency: int, image: bytes) -> dict:
    import httpx

    statuses: dict[str, int] = {}
    retry_after = set()
    left = [n]

    async def loop():
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while left[0] > 0:
                left[0] -= 1
                try:
                    r = await http.post("/predict", files={"image": ("x.png", image, "image/png")})
                except httpx.HTTPError as exc:
                    # a refusal closes the connection; when the request body had not been read yet, the
                    # kernel may answer with a reset that the client sees instead of the 429
                    key = type(exc).__name__
                else:
                    key = str(r.status_code)
                    if r.status_code == 429:
                        retry_after.add(r.headers.get("retry-after"))
                statuses[key] = statuses.get(key, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(time.perf_counter() - started, 2),
        "statuses": statuses,
        "retry_after": sorted(v for v in retry_after if v),
    }


def metrics_counts(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("imgcls_requests_total{") and 'endpoint="/predict"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = int(float(line.rsplit(" ", 1)[1]))
    return out


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--upload-gb", type=float, default=2.0)
    parser.add_argument("--burst-requests", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 requests, 64 MB upload, 1 epoch")
    parser.add_argument(
        "--out", default=None, help="results JSON (default bench/results/load_test.json; none with --quick)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.upload_gb, args.burst_requests, args.epochs = 60, 0.0625, 80, 1
    out = args.out or (None if args.quick else str(ROOT / "bench" / "results" / "load_test.json"))

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="imgcls-load-") as tmp:
        root = Path(tmp)
        os.chdir(root)
        t0 = time.perf_counter()
        try:
            model_uri, env, params, prepared = train_model(root, args.epochs)
        finally:
            os.chdir(cwd)
        train_s = round(time.perf_counter() - t0, 1)
        images = request_images(prepared, args.requests)
        log = root / "server.log"
        input_log = root / "inputs"
        limit_mb = 10.0
        rate, burst = 1e6, 1_000_000
        print(f"model {model_uri} trained in {train_s} s; {len(images)} distinct request images", flush=True)

        with served(
            model_uri,
            params,
            env,
            log,
            [
                "--rate-limit",
                str(rate),
                "--rate-burst",
                str(burst),
                "--input-log",
                str(input_log),
                "--max-upload-mb",
                str(limit_mb),
            ],
            TOKEN,
        ) as url:
            asyncio.run(_load(url, images, min(40, args.requests), args.concurrency))  # warm-up, not counted
            records_before = sum(1 for p in input_log.glob("inputs*.jsonl") for _ in open(p, "rb"))
            with LoadSampler() as sampler:
                load = asyncio.run(_load(url, images, args.requests, args.concurrency))
            load["machine_load_1m"] = sampler.summary()
            time.sleep(1.0)  # the last background records
            load["input_log_records"] = (
                sum(1 for p in input_log.glob("inputs*.jsonl") for _ in open(p, "rb")) - records_before
            )
            load["server_metrics_predict"] = metrics_counts(url)
            print(
                f"load: {load['statuses']} in {load['wall_s']} s, {load['throughput_rps']} req/s, "
                f"latency {load['latency_ms']}, load avg {load['machine_load_1m']}",
                flush=True,
            )
            auth = writers(url, images[0])
            upload = big_upload(url, int(args.upload_gb * (1 << 30)), int(limit_mb * 1024 * 1024) + 64 * 1024)
            print(
                f"feedback without/with a wrong token: {auth}; upload: {upload['status']} after "
                f"{upload['sent_bytes']:,} bytes sent",
                flush=True,
            )
            alive_after = httpx.get(url + "/health", timeout=30).status_code

        drift = subprocess.run(
            [*IMGCLS, "drift", "--params", str(params), "--log-dir", str(input_log), "--window", "500"],
            cwd=root,
            env=os.environ | env | {"PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )

        with served(model_uri, params, env, log, ["--no-input-log"], None) as url:
            no_token = writers(url, images[0])
            limited = asyncio.run(_burst(url, args.burst_requests, args.concurrency, images[0]))
        print(f"no token configured: {no_token}; default rate limit: {limited['statuses']}", flush=True)

    result = {
        "settings": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "model": f"resnet_small, {args.epochs} epochs on 120 generated 32x32 grey images (train stage)",
            "model_train_s": train_s,
            "server": "imgcls serve (uvicorn, 1 process) on 127.0.0.1, input log on; clients in this process",
            "load_rate_limit": [rate, burst],
            "max_upload_mb": limit_mb,
            "quick": args.quick,
        },
        "load": load,
        "feedback_unauthenticated": auth,
        "feedback_no_token_configured": no_token,
        "chunked_upload": upload,
        "server_alive_after_upload": alive_after == 200,
        "rate_limit_default": {"rate": DEFAULT_RATE, "burst": DEFAULT_BURST, **limited},
        "drift_cli": {"exit_code": drift.returncode, "output": (drift.stdout + drift.stderr).strip()[-1500:]},
    }
    print(
        table(
            ["requests", "clients", "errors", "p50 ms", "p95 ms", "p99 ms", "req/s", "load avg (max)"],
            [
                [
                    args.requests,
                    args.concurrency,
                    load["errors"],
                    load["latency_ms"]["p50"],
                    load["latency_ms"]["p95"],
                    load["latency_ms"]["p99"],
                    load["throughput_rps"],
                    load["machine_load_1m"]["max"],
                ]
            ],
        )
    )
    if out:
        write_result(result, out)
        print(f"-> {out}")
    ok = (
        load["errors"] == 0
        and load["input_log_records"] == args.requests
        and set(auth.values()) == {401}
        and set(no_token.values()) == {403}
        and upload["status"] == 413
        and limited["statuses"].get("429", 0) > 0
    )
    if not ok:
        print(
            "FAILED: "
            + json.dumps(
                {k: result[k] for k in ("load", "feedback_unauthenticated", "chunked_upload", "rate_limit_default")},
                default=str,
            )[:3000],
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
