"""Lightning overhead: our ImageClassifier + PreparedDataModule under the Trainer that tasks/train.py
builds (its callbacks: checkpoints, early stopping, LR monitor; MLFlowLogger to a temporary sqlite
store, log_every_n_steps=1, progress bar on) against a hand-written PyTorch loop on the same network,
the same DataLoader (same Dataset, albumentations spec, batch size, workers), AdamW + per-step
OneCycle with the same numbers, label-smoothed cross-entropy, the same number of steps.

Each run is one epoch of `--steps` steps followed by `--val-batches` validation batches (train.py
validates every epoch). The rate compared is steady-state images/s from the end of step `--warmup`
to the end of the last step (worker start and first-step allocations excluded); the end-to-end
seconds of each run (fit() or the loop, sanity check and validation included) are reported too.
Runs alternate (Lightning, plain, plain, Lightning, ...) so warm-up and machine load fall on both.

    python -m bench.loop_overhead [--n 8000 | --prepared DIR] [--steps 40] [--repeats 2]
    python -m bench.loop_overhead --quick      # tiny store, batch 16, 6 steps: a smoke run for tests"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import pstats
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.common import (
    build_prepared,
    device_setup,
    plain_training_steps,
    ratio,
    synchronized_clock,
    table,
    with_batch_resolved,
    write_result,
)

GOAL = 0.97  # Lightning images/s over plain-loop images/s
PROFILE_DIR: Path | None = None  # --profile: cProfile of each run's training, top functions as text
SYNC_PROBE = False  # --sync-probe: count the device syncs of the timed steps by the line that caused them


class SyncProbe:
    """Between start() and stop(), under torch.cuda.set_sync_debug_mode("warn"), every implicit device
    sync (a tensor read back to Python, a copy into pageable memory) raises a warning; they are counted by
    the Python line it came from. A loop that syncs every step loses the CPU/GPU overlap, which is what
    a Lightning step slower than the plain one on the GPU would look like. Off unless --sync-probe."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()
        self._catching = None

    def start(self) -> None:
        if not SYNC_PROBE:
            return
        import torch

        self._catching = warnings.catch_warnings(record=True)
        self._log = self._catching.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._catching is None:
            return
        import torch

        torch.cuda.set_sync_debug_mode("default")
        self._catching.__exit__(None, None, None)
        self._catching = None
        for caught in self._log:
            if "synchroniz" in str(caught.message):
                self.counts[f"{caught.filename}:{caught.lineno}"] += 1

    def report(self, run: dict) -> dict:
        if SYNC_PROBE:
            run["syncs"] = dict(self.counts.most_common(12))
        return run


@contextlib.contextmanager
def profiled(name: str):
    """cProfile the block when --profile is set (slows both loops: compare profiles, not rates)."""
    if PROFILE_DIR is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        # by own time (which operations) and by cumulative time (which hook or callback calls them)
        for order in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(order).print_stats(60 if order == "cumulative" else 30)
            suffix = "" if order == "tottime" else "_cumulative"
            (PROFILE_DIR / f"{name}{suffix}.txt").write_text(text.getvalue(), encoding="utf-8")


def step_timer(warmup: int, steps: int):
    import lightning as L

    class StepTimer(L.Callback):
        """Wall clock at the end of step `warmup` and of step `steps` (after the optimizer step, the
        device synchronized); the sync probe watches the steps in between."""

        def __init__(self):
            self.marks: dict[int, float] = {}
            self.probe = SyncProbe()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 == steps:
                self.probe.stop()
            if batch_idx + 1 in (warmup, steps):
                self.marks[batch_idx + 1] = synchronized_clock(pl_module.device)
            if batch_idx + 1 == warmup:
                self.probe.start()

    return StepTimer()


def lightning_run(prepared: Path, tp, steps: int, warmup: int, val_batches: int, workdir: Path) -> dict:
    """The Trainer as tasks.train.run builds it, limited to one epoch of `steps` batches."""
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    from models.data import PreparedDataModule
    from models.module import ImageClassifier
    from tasks.train import device_settings, make_callbacks

    started = time.perf_counter()
    workdir.mkdir(parents=True)  # checkpoints here, the MLflow store beside it (shared by all runs)
    L.seed_everything(tp.seed, workers=True, verbose=False)
    gpu, precision, channels_last = device_settings(tp)
    data = PreparedDataModule(prepared, tp.batch_size, tp.num_workers, tp.seed, pin_memory=gpu)
    module = ImageClassifier(
        tp.network,
        data.classes,
        data.stats,
        optimizer=tp.optimizer,
        lr=tp.lr,
        weight_decay=tp.weight_decay,
        scheduler=tp.scheduler,
        warmup_epochs=tp.warmup_epochs,
        label_smoothing=tp.label_smoothing,
        channels_last=channels_last,
    )
    timer = step_timer(warmup, steps)
    _, callbacks = make_callbacks(tp, workdir)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=tp.accelerator,
        devices=tp.devices,
        precision=precision,
        deterministic=tp.deterministic,
        callbacks=[*callbacks, timer],
        default_root_dir=workdir,
        logger=MLFlowLogger(
            experiment_name="bench_loop_overhead", tracking_uri=f"sqlite:///{workdir.parent / 'mlflow.db'}"
        ),
        limit_train_batches=steps,
        limit_val_batches=val_batches,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        with profiled(f"lightning_{workdir.name}"):
            trainer.fit(module, datamodule=data)
    return timer.probe.report(_rates(timer.marks, warmup, steps, tp.batch_size, time.perf_counter() - started))


def plain_run(prepared: Path, tp, steps: int, warmup: int, val_batches: int, name: str = "plain") -> dict:
    """The same training written by hand: no Trainer, no callbacks, no logger."""
    import lightning as L
    import torch

    from models.data import PreparedDataModule
    from models.networks import build_network

    started = time.perf_counter()
    L.seed_everything(tp.seed, workers=True, verbose=False)
    device, amp_dtype, channels_last = device_setup(tp)
    data = PreparedDataModule(prepared, tp.batch_size, tp.num_workers, tp.seed, pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = build_network(tp.network, len(data.classes), int(data.stats["channels"])).to(
        device, memory_format=memory_format
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    warmup_steps = min(steps - 1, int(steps * tp.warmup_epochs))  # ImageClassifier's rule, one epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tp.lr, total_steps=steps, pct_start=min(0.5, max(warmup_steps / steps, 2.0 / steps))
    )
    marks: dict[int, float] = {}
    probe = SyncProbe()
    with profiled(name):
        for step in plain_training_steps(
            network,
            data.train_dataloader(),
            optimizer,
            tp.label_smoothing,
            steps,
            schedule,
            device,
            amp_dtype,
            channels_last,
        ):
            if step == steps:
                probe.stop()
            if step in (warmup, steps):
                marks[step] = synchronized_clock(device)
            if step == warmup:
                probe.start()
    network.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for batch, (x, y) in enumerate(data.val_dataloader()):
            if batch == val_batches:
                break
            (network(x.to(device)).argmax(1) == y.to(device)).float().mean().item()
    return probe.report(_rates(marks, warmup, steps, tp.batch_size, time.perf_counter() - started))


def _rates(marks: dict[int, float], warmup: int, steps: int, batch_size: int, total: float) -> dict:
    seconds = marks[steps] - marks[warmup]
    images = (steps - warmup) * batch_size
    return {
        "timed_images": images,
        "timed_seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2),
        "end_to_end_seconds": round(total, 2),
    }


def measure(prepared: Path, tp, steps: int, warmup: int, val_batches: int, repeats: int, workdir: Path) -> dict:
    from models.data import PreparedDataModule
    from tasks.train import device_settings

    train_rows = len(PreparedDataModule(prepared, tp.batch_size, 0, tp.seed).train_index)
    if train_rows < steps * tp.batch_size:
        raise SystemExit(
            f"{prepared}: {train_rows} train images, fewer than steps x batch size "
            f"({steps} x {tp.batch_size}): use a larger --n or fewer --steps"
        )
    runs: dict[str, list[dict]] = {"lightning": [], "plain": []}
    order = []
    for r in range(repeats):
        for kind in ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning"):
            order.append(kind)
            if kind == "lightning":
                runs[kind].append(lightning_run(prepared, tp, steps, warmup, val_batches, workdir / f"run{len(order)}"))
            else:
                runs[kind].append(plain_run(prepared, tp, steps, warmup, val_batches, f"plain_run{len(order)}"))
            print(f"{kind}: {runs[kind][-1]}", flush=True)
    summary = {kind: _pooled(rs) for kind, rs in runs.items()}
    # each Lightning run against the plain run next to it: spread shows how much the machine's load moved
    pair_ratios = [ratio(a["images_per_s"], b["images_per_s"]) for a, b in zip(runs["lightning"], runs["plain"])]
    _, precision, channels_last = device_settings(tp)
    return {
        "settings": {
            "accelerator": tp.accelerator,
            "precision": precision,
            "channels_last": channels_last,
            "network": tp.network,
            "batch_size": tp.batch_size,
            "num_workers": tp.num_workers,
            "steps": steps,
            "warmup_steps": warmup,
            "val_batches": val_batches,
            "repeats": repeats,
            "optimizer": tp.optimizer,
            "scheduler": tp.scheduler,
            "lr": tp.lr,
            "logger": "MLFlowLogger, temporary sqlite store",
            "train_rows": train_rows,
        },
        "order": order,
        "runs": runs,
        **summary,
        "ratio": ratio(summary["lightning"]["images_per_s"], summary["plain"]["images_per_s"]),
        "end_to_end_ratio": ratio(summary["plain"]["end_to_end_seconds"], summary["lightning"]["end_to_end_seconds"]),
        "pair_ratios": pair_ratios,
        "median_pair_ratio": float(np.median(pair_ratios)),
        "goal": GOAL,
    }


def _pooled(runs: list[dict]) -> dict:
    """All timed images over all timed seconds, and the summed end-to-end seconds."""
    images, seconds = sum(r["timed_images"] for r in runs), sum(r["timed_seconds"] for r in runs)
    return {
        "images_per_s": round(images / seconds, 2),
        "end_to_end_seconds": round(sum(r["end_to_end_seconds"] for r in runs), 2),
    }


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = [[kind, result[kind]["images_per_s"], result[kind]["end_to_end_seconds"]] for kind in ("lightning", "plain")]
    return (
        f"{s.get('accelerator', 'cpu')} ({s.get('precision', '32-true')}), {s['network']}, batch {s['batch_size']}, {s['num_workers']} workers, {s['steps']} steps "
        f"({s['warmup_steps']} warm-up) x {s['repeats']} runs each, order {' '.join(result['order'])}\n\n"
        + table(["loop", "images/s (steady)", "end-to-end s (all runs)"], rows)
        + f"\n\nratio Lightning/plain images/s: {result['ratio']:.3f} (goal >= {GOAL}); "
        f"end-to-end plain/Lightning: {result['end_to_end_ratio']:.3f}; per pair: "
        f"{', '.join(f'{r:.3f}' for r in result['pair_ratios'])} (median {result['median_pair_ratio']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loop_overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=8000, help="Fashion-MNIST images for the store (default 8000)")
    parser.add_argument("--prepared", type=Path, default=None, help="use this prepared store instead of building one")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timed window")
    parser.add_argument("--val-batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating order")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: train.batch_size, resolved as train does"
    )
    parser.add_argument("--num-workers", type=int, default=None, help="default: train.num_workers")
    parser.add_argument(
        "--accelerator",
        choices=["cpu", "gpu"],
        default="cpu",
        help="gpu: bf16-mixed and channels_last where supported, for both loops",
    )
    parser.add_argument("--network", default=None, help="default: train.network")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="write cProfile top-30 text per run into this folder"
    )
    parser.add_argument(
        "--sync-probe", action="store_true", help="GPU: count each run's device syncs in the timed steps by source line"
    )
    parser.add_argument("--quick", action="store_true", help="n=300, batch 16, 6 steps, 1 run each")
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop_overhead.json"))
    args = parser.parse_args(argv)
    global PROFILE_DIR, SYNC_PROBE
    PROFILE_DIR, SYNC_PROBE = args.profile, args.sync_probe
    if args.sync_probe and args.accelerator != "gpu":
        parser.error("--sync-probe needs --accelerator gpu (CUDA's sync debug mode)")
    if args.quick:
        args.n, args.steps, args.warmup, args.val_batches, args.repeats = 300, 6, 2, 1, 1
        args.batch_size = args.batch_size or 16
    import torch

    from tasks.train import Params as TrainParams

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"batch_size": args.batch_size, "num_workers": args.num_workers, "network": args.network}
    tp = TrainParams(
        accelerator=args.accelerator,
        devices=1,
        precision="32-true" if args.accelerator == "cpu" else "auto",
        **{k: v for k, v in overrides.items() if v is not None},
    )
    with tempfile.TemporaryDirectory(prefix="loop_overhead_") as tmp:
        prepared = args.prepared or build_prepared(Path(tmp) / "data", args.n, workers=1 if args.quick else 2)
        tp = with_batch_resolved(tp, prepared)
        result = measure(prepared, tp, args.steps, args.warmup, args.val_batches, args.repeats, Path(tmp) / "runs")
    result["settings"]["n"] = None if args.prepared else args.n
    write_result(result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
