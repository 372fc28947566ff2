"""Helpers shared by the speed benchmarks: the machine and library versions a figure was measured
with, a JSON writer, a Markdown table, and small projects built from real Fashion-MNIST images by
running the stages' own run() functions (ingest -> clean -> validate -> split -> augment)."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench import fashion
from tasks.common.packages import installed_version
from tasks.common.params import Paths, parse_section
from tasks.common.versioning import git_commit
from tasks.stages import STAGES

DATA_STAGES = ["ingest", "clean", "validate", "split", "augment"]
VERSIONED = ("torch", "torchvision", "lightning", "albumentations", "mlflow", "numpy", "pillow", "timm")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where and with what a result was measured (goes into every results JSON)."""
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit()[:12],
        "versions": {name: (installed_version(name) or (None, None))[1] for name in VERSIONED},
    }


def write_result(result: dict, out: str | Path) -> dict:
    """Add the machine block and write the JSON atomically; returns what was written."""
    from tasks.common.atomic import write_json

    result = {**result, "machine": machine()}
    write_json(result, Path(out))
    return result


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4)


def table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_fashion_folder(root: Path, n: int, seed: int = 0) -> Path:
    """n Fashion-MNIST training images (a random draw, classes in their natural mix) as PNGs under
    root/<class>/, the folder layout ingest reads. Returns root."""
    images, labels = fashion.load("train")
    picked = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
    for i in picked:
        target = root / fashion.CLASSES[labels[i]] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(target)
    return root


def project_paths(root: Path) -> Paths:
    return Paths(**{name: str(root / value) for name, value in Paths().model_dump().items()})


def write_params(root: Path, sections: dict) -> Path:
    """params.yaml with absolute paths under root plus the given stage sections."""
    root.mkdir(parents=True, exist_ok=True)
    params_file = root / "params.yaml"
    data = {"paths": project_paths(root).model_dump(), **sections}
    params_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return params_file


def run_stages(params_file: Path, names: list[str]) -> dict[str, float]:
    """Each stage through its own Params (params.yaml checked as the CLI would) and run(); seconds each."""
    data = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    paths = parse_section(data, "paths", Paths, params_file)
    seconds = {}
    for name in names:
        module = STAGES[name]
        params = parse_section(data, name, module.Params, params_file)
        started = time.perf_counter()
        module.run(params, paths)
        seconds[name] = round(time.perf_counter() - started, 2)
    return seconds


def build_prepared(root: Path, n: int, seed: int = 0, workers: int = 2) -> Path:
    """A prepared store (what `augment` writes) from n Fashion-MNIST images, made by the real data
    stages with params.yaml defaults (workers aside). Returns the prepared directory."""
    write_fashion_folder(root / "source", n, seed)
    sections = {
        "ingest": {"source": str(root / "source")},
        "clean": {"workers": workers},
        "augment": {"workers": workers},
    }
    run_stages(write_params(root / "project", sections), DATA_STAGES)
    return Path(project_paths(root / "project").prepared)


def write_array_store(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    splits: list[str] | np.ndarray,
    classes: list[str],
    transforms: list[dict],
    test_time_flip: bool,
) -> Paths:
    """A prepared store + split manifest under root straight from arrays, in the layout `augment` writes
    (images uint8 [N, H, W] or [N, H, W, C]; labels = class indices; splits = train / val / test per
    image; transforms = albumentations steps as augment's params give them, before Normalize, whose
    mean/std come from the train images). Returns the Paths the train / evaluate stages read."""
    import albumentations as A
    import pandas as pd

    images = images[..., None] if images.ndim == 3 else images
    labels = np.asarray(labels).astype(int)
    splits = np.asarray(splits, dtype=str)
    index = pd.DataFrame(
        {
            "row": np.arange(len(labels)),
            "image_id": [f"{i:064x}" for i in range(len(labels))],
            "label": [classes[i] for i in labels],
            "label_idx": labels,
            "split": splits,
            "balance_copy": False,
        }
    )
    paths = Paths(
        prepared=str(root / "prepared"),
        split=str(root / "split.parquet"),
        train_dir=str(root / "train"),
        reports=str(root / "reports"),
    )
    prepared = Path(paths.prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    np.save(prepared / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    index.to_parquet(prepared / "index.parquet", index=False)
    index.to_parquet(paths.split, index=False)
    train_pixels = images[splits == "train"].reshape(-1, images.shape[-1])
    mean, std = (train_pixels.mean(0) / 255).tolist(), (train_pixels.std(0) / 255).tolist()
    (prepared / "classes.json").write_text(json.dumps(list(classes)))
    stats = {
        "image_size": int(images.shape[1]),
        "channels": int(images.shape[-1]),
        "mean": mean,
        "std": std,
        "test_time_flip": test_time_flip,
    }
    (prepared / "stats.json").write_text(json.dumps(stats))
    normalize = A.Normalize(mean=mean, std=std, max_pixel_value=255)
    steps = [getattr(A, t["name"])(**{k: v for k, v in t.items() if k != "name"}) for t in transforms]
    A.save(A.Compose([*steps, normalize]), str(prepared / "augment.json"), data_format="json")
    A.save(A.Compose([normalize]), str(prepared / "eval.json"), data_format="json")
    return paths


def device_setup(tp) -> tuple:
    """(torch device, autocast dtype or None, channels_last) for the train Params `tp`, resolved by the
    train stage's own rule (tasks/train.py device_settings), so the hand-written loops of the benchmarks
    run with the precision and memory layout Lightning gets from the same Params."""
    import torch

    from tasks.train import device_settings

    gpu, precision, channels_last = device_settings(tp)
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: no CUDA device here")
    return (
        torch.device("cuda" if gpu else "cpu"),
        (torch.bfloat16 if precision.startswith("bf16") else None),
        channels_last,
    )


def with_batch_resolved(tp, prepared: Path):
    """Train params with batch_size "auto" resolved for `prepared` the way the train stage does."""
    from tasks.train import device_settings, prepared_data

    return prepared_data(tp, Path(prepared), device_settings(tp)[0])[0]


def synchronized_clock(device) -> float:
    """perf_counter after the device has finished its queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain_training_steps(
    network,
    loader,
    optimizer,
    label_smoothing: float,
    steps: int,
    schedule=None,
    device=None,
    amp_dtype=None,
    channels_last: bool = False,
):
    """A hand-written PyTorch training loop (no Lightning): yields the step number after each optimizer
    step and stops after `steps` (the loader is re-iterated when an epoch is shorter). On a GPU the
    batch is copied over, optionally in channels_last, and the forward pass autocasts to `amp_dtype`."""
    import torch
    import torch.nn.functional as F

    device = device or torch.device("cpu")
    network.train()
    step = 0
    while True:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(network(x), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            step += 1
            yield step
            if step == steps:
                return


def stage_seconds(output: str, stage: str) -> float | None:
    """The stage's own time from its log, as tasks.common.entry writes it (`[stage] finished in 3.51 s`:
    no interpreter start, no DVC hashing); None when the stage did not run."""
    found = re.findall(rf"\[{stage}\] finished in ([0-9.]+) s", output)
    return float(found[-1]) if found else None
