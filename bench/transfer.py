"""Transfer learning measured, not only possible: does `train.pretrained_path` (+ `freeze_backbone_epochs`)
beat training from scratch when few labelled images exist? Everything runs through the real train stage
(tasks/train.py run() with its own Params) on prepared stores written from arrays (bench.common.write_array_store).

1. Pretrain the network on part of the Fashion-MNIST training set (a fixed seed-0 draw of `--pretrain-images`,
   90/10 train/val); the train stage exports model/artifacts/weights.safetensors, the file that
   `train.pretrained_path` reads. Its accuracy on the official 10k Fashion test set is reported as an anchor.
2. Digits (sklearn load_digits, 8x8 upscaled to 28x28 grey, a different dataset): for each seed and each
   labelled budget N per class, N labelled images per class are drawn (80% train, 20% val, which picks the
   best epoch), every other digit is test. Three arms on the SAME split, epochs and settings: scratch,
   pretrained, pretrained + freeze_backbone_epochs. The pretrained file given for digits has the Fashion
   head removed (its classes mean nothing for digits), so the head starts fresh; the backbone is loaded.
3. Fashion, 100 labelled per class drawn only from training images NOT in the pretraining draw, tested on
   the official 10k test set, same three arms (the full file: same 10 classes, so the head is kept).
   In-domain: it shows what the weights carry to new images of the same task; digits shows a new task.

    python -m bench.transfer                 # the full run (CPU: ~15-20 min on 2 shared cores)
    python -m bench.transfer --quick         # tiny sizes, end-to-end check (< 2 min)
    python -m bench.transfer --network resnet_small --threads 0   # params.yaml's network, on a bigger box

Network: resnet_tiny by default, not params.yaml's resnet_small: on the 2 shared cores this was written on,
one torch thread trains resnet_small at ~60 images/s and resnet_tiny at ~145 (28 px, batch 16-128), and
the whole comparison (pretraining + 21 fine-tunes) must fit ~20 CPU minutes. One thread, because two
threads on cores other processes also use ran 3-6x slower (each step waits for the descheduled thread).

Writes bench/results/transfer.json (--out) and prints a Markdown table (test accuracy mean / min-max over
seeds, train seconds per run). MLflow runs go to a sqlite store inside the work folder (--root)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench import fashion
from bench.common import table, write_array_store, write_result
from tasks.common.params import Paths

FASHION_TRANSFORMS = [  # bench/accuracy.py's Fashion augmentations
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "translate_percent": [-0.06, 0.06], "scale": [0.95, 1.05], "p": 0.5},
]
# digits are not mirror-symmetric: no flip, at train or test time
DIGITS_TRANSFORMS = [{"name": "Affine", "translate_percent": [-0.06, 0.06], "scale": [0.95, 1.05], "p": 0.5}]
ARMS = ("scratch", "pretrained", "pretrained_freeze")
IMAGE_SIZE = 28


def digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """sklearn's 1797 8x8 digits (0..16) as uint8 [N, 28, 28] (bilinear upscale), labels, class names."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.clip(bunch.images * (255 / 16), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(x).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for x in small])
    return images, bunch.target.astype(int), [str(c) for c in range(10)]


def labelled_split(labels: np.ndarray, per_class: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """'train' / 'val' / 'test' per image: per_class labelled images of each class drawn from `pool`
    (default: all), 20% of them (at least 1) val, the rest train; every other image test."""
    rng = np.random.default_rng(seed)
    splits = np.full(len(labels), "test", dtype=object)
    pool = np.arange(len(labels)) if pool is None else pool
    n_val = max(1, round(per_class * 0.2))
    for c in np.unique(labels):
        picked = rng.permutation(pool[labels[pool] == c])[:per_class]
        splits[picked[:n_val]] = "val"
        splits[picked[n_val:]] = "train"
    return splits.astype(str)


def with_dirs(paths: Paths, folder: Path) -> Paths:
    return paths.model_copy(update={"train_dir": str(folder / "train"), "reports": str(folder / "reports")})


def test_accuracy(paths: Paths) -> float:
    """Accuracy of the exported model (train_dir/model, as evaluate loads it) on the store's test split,
    scored by the evaluate stage's own predict_proba (test-time flip as stats.json says)."""
    from models.predictor import load_predictor
    from tasks.common.prepared import open_images, read_index
    from tasks.evaluate import predict_proba

    index = read_index(paths.prepared)
    test = index[index["split"] == "test"]
    predictor = load_predictor(paths.train_dir)
    proba = predict_proba(predictor, open_images(paths.prepared), test["row"].to_numpy(), len(predictor.classes))
    return float((proba.argmax(1) == test["label_idx"].to_numpy()).mean())


def train_and_score(params, paths: Paths) -> dict:
    from tasks import train

    started = time.perf_counter()
    result = train.run(params, paths)
    train_seconds = time.perf_counter() - started
    return {
        "test_acc": round(test_accuracy(paths), 4),
        "best_val_acc": round(float(result["best_val_acc"]), 4),
        "epochs": int(result["epochs"]),
        "train_seconds": round(train_seconds, 1),
        "reinitialised": result["reinitialised"],
    }


def pretrain(root: Path, args, base: dict) -> tuple[Path, np.ndarray, dict]:
    """Train on a seed-0 draw of Fashion training images; returns (weights.safetensors, the drawn rows, summary)."""
    from tasks import train

    train_images, train_labels = fashion.load("train")
    test_images, test_labels = fashion.load("test")
    drawn = np.sort(np.random.default_rng(0).permutation(len(train_labels))[: args.pretrain_images])
    order = np.random.default_rng(1).permutation(len(drawn))
    splits = np.where(np.isin(np.arange(len(drawn)), order[: len(drawn) // 10]), "val", "train")
    test_rows = np.arange(len(test_labels))[: args.test_limit]
    paths = write_array_store(
        root / "pretrain",
        np.concatenate([train_images[drawn], test_images[test_rows]]),
        np.concatenate([train_labels[drawn], test_labels[test_rows]]),
        np.concatenate([splits, np.full(len(test_rows), "test")]),
        fashion.CLASSES,
        FASHION_TRANSFORMS,
        test_time_flip=True,
    )
    params = train.Params(**base, epochs=args.pretrain_epochs, batch_size=128, experiment="transfer-pretrain")
    summary = train_and_score(params, paths)
    weights = Path(paths.train_dir) / "model" / "artifacts" / "weights.safetensors"
    if not weights.is_file():
        raise SystemExit(f"the train stage exported no {weights}")
    summary |= {"images": len(drawn), "train_images": int((splits == "train").sum()), "test_images": len(test_rows)}
    return weights, drawn, summary


def without_head(weights: Path, head_prefix: str = "fc.") -> Path:
    """A copy of the weights minus the classifier head (a new task's classes start from a fresh head)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    kept = {k: v for k, v in state.items() if not k.removeprefix("network.").startswith(head_prefix)}
    target = weights.with_name("backbone.safetensors")
    save_file(kept, str(target))
    return target


def fine_tune_arms(task_root: Path, paths: Paths, weights: Path, base: dict, args, seed: int) -> dict:
    from tasks import train

    results = {}
    for arm in ARMS:
        extra = {}
        if arm != "scratch":
            extra["pretrained_path"] = str(weights)
        if arm == "pretrained_freeze":
            extra["freeze_backbone_epochs"] = args.freeze_epochs
        params = train.Params(
            **base,
            **extra,
            epochs=args.finetune_epochs,
            batch_size=args.finetune_batch_size,
            seed=seed,
            experiment="transfer-finetune",
        )
        results[arm] = train_and_score(params, with_dirs(paths, task_root / arm))
        logging.getLogger("bench.transfer").warning("%s %s seed %d: %s", task_root.parent.name, arm, seed, results[arm])
    return results


def summarise(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {
        "test_acc_mean": round(statistics.fmean(accs), 4),
        "test_acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
        "test_acc_min": min(accs),
        "test_acc_max": max(accs),
        "train_seconds_mean": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
        "seeds": len(runs),
    }


def summary_cells(s: dict, digits: int = 3) -> list:
    """[seeds, test acc mean, min-max spread ("-" for one seed), train s mean] of a summarise() result."""
    spread = f"{s['test_acc_min']:.{digits}f}-{s['test_acc_max']:.{digits}f}" if s["seeds"] > 1 else "-"
    return [s["seeds"], s["test_acc_mean"], spread, s["train_seconds_mean"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: an end-to-end check, not a result")
    parser.add_argument("--network", default="resnet_tiny", help="params.yaml's is resnet_small (see above)")
    parser.add_argument("--pretrain-images", type=int, default=20000)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--digits-per-class", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--fashion-per-class", type=int, default=100, help="0: skip the Fashion fine-tune")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-batch-size", type=int, default=16)
    parser.add_argument("--freeze-epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the digits tasks")
    parser.add_argument("--fashion-seeds", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=2000, help="official Fashion test images used (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/transfer.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_images, args.pretrain_epochs, args.digits_per_class = 1000, 1, [10]
        args.fashion_per_class, args.finetune_epochs, args.seeds, args.test_limit = 10, 2, 1, 500
        args.fashion_seeds = 1
        if args.out == parser.get_default("out"):
            args.out = Path(tempfile.gettempdir()) / "transfer_quick.json"

    import torch

    from tasks import train

    network = args.network
    if args.threads:
        torch.set_num_threads(args.threads)
    args.test_limit = args.test_limit or None
    # the run's settings are the train stage's defaults except: every arm runs all its epochs (no early
    # stop), no loader workers (2 shared cores, tiny sets), CPU
    base = {
        "network": network,
        "early_stopping_patience": None,
        "num_workers": 0,
        "accelerator": "cpu",
        "checkpoint_every_n_steps": 10_000,
    }
    train.Params(**base)  # a bad --network is one line here, before anything runs

    out = args.out.resolve()
    root = (args.root or Path(tempfile.mkdtemp(prefix="transfer-"))).resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"--root {root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    # MLflow store and experiment artifacts inside the work folder, not the project's mlflow.db / mlruns
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.chdir(root)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    weights, drawn, pretrained = pretrain(root, args, base)
    backbone = without_head(weights)
    print(f"pretrained {network}: {pretrained}", flush=True)

    digit_images, digit_labels, digit_classes = digits_images()
    tasks: dict[str, dict] = {}
    for per_class in args.digits_per_class:
        name = f"digits_{per_class}_per_class"
        runs = {arm: [] for arm in ARMS}
        for seed in range(args.seeds):
            splits = labelled_split(digit_labels, per_class, seed)
            task_root = root / name / f"seed{seed}"
            paths = write_array_store(
                task_root, digit_images, digit_labels, splits, digit_classes, DIGITS_TRANSFORMS, test_time_flip=False
            )
            for arm, result in fine_tune_arms(task_root, paths, backbone, base, args, seed).items():
                runs[arm].append(result | {"seed": seed})
        tasks[name] = {
            "labelled_per_class": per_class,
            "train_images": int((splits == "train").sum()),
            "val_images": int((splits == "val").sum()),
            "test_images": int((splits == "test").sum()),
            "pretrained_file": backbone.name,
            "arms": {arm: {"summary": summarise(r), "runs": r} for arm, r in runs.items()},
        }

    if args.fashion_per_class:
        train_images, train_labels = fashion.load("train")
        test_images, test_labels = fashion.load("test")
        unused = np.setdiff1d(np.arange(len(train_labels)), drawn)  # never seen in pretraining
        test_rows = np.arange(len(test_labels))[: args.test_limit]
        name = f"fashion_{args.fashion_per_class}_per_class"
        runs = {arm: [] for arm in ARMS}
        for seed in range(args.fashion_seeds):
            picked = labelled_split(train_labels, args.fashion_per_class, seed, pool=unused)
            rows = np.flatnonzero(picked != "test")
            splits = np.concatenate([picked[rows], np.full(len(test_rows), "test")])
            task_root = root / name / f"seed{seed}"
            paths = write_array_store(
                task_root,
                np.concatenate([train_images[rows], test_images[test_rows]]),
                np.concatenate([train_labels[rows], test_labels[test_rows]]),
                splits,
                fashion.CLASSES,
                FASHION_TRANSFORMS,
                test_time_flip=True,
            )
            for arm, result in fine_tune_arms(task_root, paths, weights, base, args, seed).items():
                runs[arm].append(result | {"seed": seed})
        tasks[name] = {
            "labelled_per_class": args.fashion_per_class,
            "train_images": int((splits == "train").sum()),
            "val_images": int((splits == "val").sum()),
            "test_images": len(test_rows),
            "pretrained_file": weights.name,
            "drawn_from": "Fashion training images outside the pretraining draw",
            "arms": {arm: {"summary": summarise(r), "runs": r} for arm, r in runs.items()},
        }

    result = {
        "quick": args.quick,
        "network": network,
        "settings": {
            **base,
            "pretrain_epochs": args.pretrain_epochs,
            "finetune_epochs": args.finetune_epochs,
            "finetune_batch_size": args.finetune_batch_size,
            "freeze_backbone_epochs": args.freeze_epochs,
            "seeds": args.seeds,
            "fashion_seeds": args.fashion_seeds,
            "torch_threads": torch.get_num_threads(),
            "other_train_params": "tasks/train.py defaults (AdamW lr 0.003, onecycle, label smoothing 0.1)",
        },
        "pretrain": pretrained,
        "tasks": tasks,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_result(result, out)
    rows = [["pretrain (Fashion test)", network, "-", pretrained["test_acc"], "-", pretrained["train_seconds"]]]
    for name, task in tasks.items():
        for arm, data in task["arms"].items():
            rows.append([name, arm, *summary_cells(data["summary"])])
    print(table(["task", "arm", "seeds", "test acc (mean)", "min-max", "train s (mean)"], rows))
    print(f"wrote {out}; total {result['total_seconds']} s; work folder {root}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
