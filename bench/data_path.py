"""Data path: can the train DataLoader feed the training step, and what does albumentations cost
against torchvision?

1. supply: images/s out of the train DataLoader of PreparedDataModule (memmap read + the store's
   augment.json albumentations pipeline + collate), with the train stage's num_workers and batch
   size, first batch (worker start) excluded;
2. demand: images/s of the training step (forward + backward + AdamW step of the network on
   batches already in memory); supply/demand >= 1 means the data path keeps up. The two are
   measured one after the other: in real training the workers and the step share the cores;
3. the same images through our albumentations pipeline and the equivalent torchvision.transforms.v2
   pipeline, one image at a time in this process, uint8 HWC array in, normalized float CHW tensor
   out; ratio albumentations/torchvision images/s. Only the params.yaml default spec (Affine +
   Normalize) has a torchvision twin here.

    python -m bench.data_path [--n 8000 | --prepared DIR] [--batches 30] [--images 3000]
    python -m bench.data_path --quick"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    build_prepared,
    device_setup,
    ratio,
    synchronized_clock,
    table,
    with_batch_resolved,
    write_result,
)


def loader_rate(prepared: Path, tp, batches: int) -> dict:
    from models.data import PreparedDataModule

    pin_memory = device_setup(tp)[0].type == "cuda"  # as training pins batches for the GPU
    data = PreparedDataModule(prepared, tp.batch_size, tp.num_workers, tp.seed, pin_memory=pin_memory)
    images, started = 0, None
    for i, (x, _) in enumerate(data.train_dataloader()):
        if i == 0:
            started = time.perf_counter()  # workers are up and the first batch is out
            continue
        images += len(x)
        if i == batches:
            break
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}


def step_rate(prepared: Path, tp, steps: int, warmup: int = 2) -> dict:
    """Forward + backward + optimizer step on `steps` batches drawn (unaugmented) before timing, already
    on the device (bf16 autocast and channels_last on a GPU, as training runs there)."""
    import torch
    import torch.nn.functional as F

    from models.data import PreparedDataModule
    from models.networks import build_network

    data = PreparedDataModule(prepared, tp.batch_size, 0, tp.seed)
    batches = [b for _, b in zip(range(min(steps, 4)), data.val_dataloader())]
    batches = [b for b in batches if len(b[0]) == tp.batch_size] or batches  # full batches, as in training
    device, amp_dtype, channels_last = device_setup(tp)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = [(x.to(device).contiguous(memory_format=memory_format), y.to(device)) for x, y in batches]
    network = build_network(tp.network, len(data.classes), int(data.stats["channels"])).to(
        device, memory_format=memory_format
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    network.train()
    images, started = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            started = synchronized_clock(device)
        x, y = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(network(x), y, label_smoothing=tp.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(x) if step >= warmup else 0
    seconds = synchronized_clock(device) - started
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}


def torchvision_twin(spec: dict):
    """torchvision.transforms.v2 equivalent of an albumentations Compose([Affine(p), Normalize]) spec."""
    import torch
    from torchvision.transforms import v2

    steps = []
    for t in spec["transform"]["transforms"]:
        name = t["__class_fullname__"].rsplit(".", 1)[-1]
        if name == "Affine":
            (tx0, tx1), (ty0, ty1) = (t["translate_percent"]["x"], t["translate_percent"]["y"])
            if not (-tx0 == tx1 and -ty0 == ty1 and -t["rotate"][0] == t["rotate"][1]):
                raise SystemExit("torchvision twin: only symmetric Affine translate/rotate ranges are mapped")
            affine = v2.RandomAffine(
                degrees=t["rotate"][1],
                translate=(tx1, ty1),
                scale=tuple(t["scale"]["x"]),
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0,
            )
            steps.append(v2.RandomApply([affine], p=t["p"]))
        elif name == "Normalize":
            steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=t["mean"], std=t["std"])]
        else:
            raise SystemExit(f"torchvision twin: no mapping for albumentations {name} (default spec only)")
    return v2.Compose(steps)


def augment_rates(prepared: Path, count: int, rounds: int = 2) -> dict:
    """Per-image rates of both pipelines on the same train images, alternating rounds."""
    import torch

    from models.transforms import load_transforms

    album, _ = load_transforms(prepared)
    album.set_random_seed(0)
    tv = torchvision_twin(json.loads((prepared / "augment.json").read_text(encoding="utf-8")))
    torch.manual_seed(0)
    stored = np.load(prepared / "images.npy", mmap_mode="r")
    images = [np.array(stored[i]) for i in range(min(count, len(stored)))]

    def run_album():
        for img in images:
            torch.from_numpy(np.ascontiguousarray(album(image=img)["image"].transpose(2, 0, 1)))

    def run_tv():
        for img in images:
            tv(torch.from_numpy(img).permute(2, 0, 1))

    seconds = {"albumentations": 0.0, "torchvision": 0.0}
    for r in range(rounds):
        for name, fn in (
            (("albumentations", run_album), ("torchvision", run_tv))
            if r % 2 == 0
            else (("torchvision", run_tv), ("albumentations", run_album))
        ):
            started = time.perf_counter()
            fn()
            seconds[name] += time.perf_counter() - started
    rates = {name: round(len(images) * rounds / s, 1) for name, s in seconds.items()}
    return {
        "images": len(images),
        "rounds": rounds,
        "albumentations_images_per_s": rates["albumentations"],
        "torchvision_images_per_s": rates["torchvision"],
        "ratio": ratio(rates["albumentations"], rates["torchvision"]),
    }


def markdown(result: dict) -> str:
    s, f = result["settings"], result["feed"]
    a = result["augment"]
    return "\n".join(
        [
            f"{s.get('accelerator', 'cpu')}: {s['network']}, batch {s['batch_size']}, DataLoader with {s['num_workers']} workers, "
            f"torch threads {s['threads']}",
            "",
            table(
                ["measure", "images/s"],
                [
                    ["train DataLoader (memmap + albumentations)", f["loader"]["images_per_s"]],
                    ["training step (forward + backward, preloaded)", f["step"]["images_per_s"]],
                ],
            ),
            f"\nsupply/demand ratio: {f['ratio']:.2f} (>= 1: the loader keeps up)",
            "",
            table(
                ["pipeline (one image at a time)", "images/s"],
                [
                    ["albumentations (augment.json)", a["albumentations_images_per_s"]],
                    ["torchvision.transforms.v2 twin", a["torchvision_images_per_s"]],
                ],
            ),
            f"\nalbumentations/torchvision ratio: {a['ratio']:.2f}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data_path", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=8000, help="Fashion-MNIST images for the store (default 8000)")
    parser.add_argument("--prepared", type=Path, default=None, help="use this prepared store instead of building one")
    parser.add_argument("--batches", type=int, default=30, help="loader batches timed")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--images", type=int, default=3000, help="images per augmentation round")
    parser.add_argument(
        "--accelerator",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where the training step runs (gpu: bf16 autocast, channels_last)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: train.batch_size, resolved as train does"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="default: train.num_workers")
    parser.add_argument("--network", default=None, help="default: train.network")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="n=300, batch 16, a few batches")
    parser.add_argument("--out", type=Path, default=Path("bench/results/data_path.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.steps, args.images = 300, 4, 3, 100
    import torch

    from tasks.train import Params as TrainParams

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {
        "batch_size": args.batch_size or (16 if args.quick else None),
        "num_workers": args.num_workers,
        "network": args.network,
    }
    tp = TrainParams(accelerator=args.accelerator, **{k: v for k, v in overrides.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="data_path_") as tmp:
        prepared = args.prepared or build_prepared(Path(tmp) / "data", args.n, workers=1 if args.quick else 2)
        tp = with_batch_resolved(tp, prepared)
        loader, step = loader_rate(prepared, tp, args.batches), step_rate(prepared, tp, args.steps)
        augment = augment_rates(prepared, args.images)
    result = {
        "settings": {
            "accelerator": tp.accelerator,
            "network": tp.network,
            "batch_size": tp.batch_size,
            "num_workers": tp.num_workers,
            "threads": torch.get_num_threads(),
            "n": None if args.prepared else args.n,
        },
        "feed": {"loader": loader, "step": step, "ratio": ratio(loader["images_per_s"], step["images_per_s"])},
        "augment": augment,
    }
    write_result(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
