"""augment: turn the split manifest into a training-ready store. Every image is decoded once here
(resized, fixed channel count) into images.npy, so an epoch decodes no file; the augmentation
pipeline from params.yaml is saved beside it as albumentations JSON, ending with Normalize by the
train statistics. Also writes reports/augment/preview.png (augmented draws) and summary.md."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from tqdm import tqdm

from models import transforms
from tasks.common import engine
from tasks.common import prepared as prepared_store
from tasks.common.atomic import atomic_dir, atomic_path, write_text
from tasks.common.entry import stage_main
from tasks.common.errors import UserError
from tasks.common.images import DecodeError, ImageBytes, decode, to_array
from tasks.common.manifest import SPLITS, read_manifest
from tasks.common.params import Paths, Strict
from tasks.common.store import ImageStore, open_locations, scheme

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["row", "image_id", "label", "label_idx", "split", "balance_copy"]
PREVIEW_SEED = 0  # the preview is a DVC output: the same params must draw the same picture
MIN_STD = 1e-6  # a constant channel would make Normalize divide by zero


def _default_transforms() -> list[dict[str, Any]]:
    return [{"name": "Affine", "translate_percent": [-0.08, 0.08], "rotate": [-10, 10], "scale": [0.9, 1.1], "p": 0.5}]


class Balance(Strict):
    enabled: bool = False
    target_ratio: float = Field(0.5, gt=0, le=1)


class Preview(Strict):
    images: int = Field(8, ge=1, le=64)
    draws: int = Field(6, ge=1, le=32)


class Params(Strict):
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal["auto", 1, 3] = "auto"
    transforms: list[dict[str, Any]] = Field(default_factory=_default_transforms)
    balance: Balance = Balance()
    preview: Preview = Preview()
    exclude_suspects: bool = True
    # Saved with the model: every prediction (evaluate, pyfunc, predict) averages the image and its
    # mirror. Only where a mirrored picture keeps its class (garments, objects; not digits or text).
    test_time_flip: bool = False
    workers: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _check_transforms(self) -> Params:
        self.transforms = transforms.check_specs(self.transforms, self.image_size)
        return self


# ---- rows -------------------------------------------------------------------------------------


def select_rows(manifest: pd.DataFrame, exclude_suspects: bool) -> tuple[pd.DataFrame, int]:
    """Rows that go into the store, in a stable order (split, label, image_id), and how many train
    rows were left out as suspected mislabels. Suspects in val/test stay: they are scored as given."""
    missing = {"image_id", "label", "split"} - set(manifest.columns)
    if missing:
        raise UserError(f"split manifest lacks column(s) {', '.join(sorted(missing))}: re-run the `split` stage")
    unknown = sorted(set(manifest["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise UserError(f"split manifest has split value(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}")
    suspect = manifest["suspect_label"].fillna(False).astype(bool) if "suspect_label" in manifest else False
    dropped = (manifest["split"] == "train") & suspect if exclude_suspects else pd.Series(False, manifest.index)
    kept = manifest.loc[~dropped, ["image_id", "label", "split"]].astype({"label": str})
    kept["split"] = pd.Categorical(kept["split"], categories=SPLITS)
    kept = kept.sort_values(["split", "label", "image_id"], kind="stable").reset_index(drop=True)
    kept["split"] = kept["split"].astype(str)
    return kept, int(dropped.sum())


def build_index(kept: pd.DataFrame, classes: list[str], balance: Balance) -> pd.DataFrame:
    """index.parquet: one row per stored image, plus (when balancing) copies of minority-class train
    rows up to ceil(target_ratio x largest class), cycling through the class's images evenly."""
    label_idx = {label: i for i, label in enumerate(classes)}
    index = kept.assign(row=np.arange(len(kept)), label_idx=kept["label"].map(label_idx), balance_copy=False)
    if balance.enabled:
        train = index[index["split"] == "train"]
        counts = train["label"].value_counts()
        target = math.ceil(balance.target_ratio * counts.max()) if len(counts) else 0
        copies = []
        for label, n in counts.items():
            if n < target:
                rows = train[train["label"] == label]
                copies.append(rows.iloc[np.arange(target - n) % n].assign(balance_copy=True))
        index = pd.concat([index, *copies], ignore_index=True)
    return index[INDEX_COLUMNS].astype({"row": "int64", "label_idx": "int64", "balance_copy": bool})


# ---- decoding ---------------------------------------------------------------------------------


def _load_one(src: Path | ImageBytes | OSError, size: int, channels: int) -> tuple[np.ndarray | None, bool, str]:
    """(array, is_gray, error) for one stored image (as tasks.common.store.open_locations gives it);
    runs in a worker process."""
    try:
        if isinstance(src, OSError):  # a remote image that could not be fetched
            raise src
        img = decode(src)
    except (DecodeError, OSError) as exc:
        return None, False, str(exc)
    arr = to_array(img, size, channels)
    # palette and RGB files whose pixels are all gray count as grayscale: the channel check runs on
    # the resized pixels, which is what the network will see
    gray = (
        channels == 1
        or img.mode == "L"
        or bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all())
    )
    return arr, gray, ""


def _load_partition(paths: list[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Engine task (tasks.common.engine): decode absolute `paths` into uint8 [k, size, size, channels],
    with a gray flag per image and (position, error) for those that do not decode."""
    out = np.zeros((len(paths), size, size, channels), np.uint8)
    gray = np.ones(len(paths), bool)
    errors = []
    for i, src in enumerate(open_locations(paths)):  # a remote store's images fetched a batch at a time
        arr, gray[i], error = _load_one(src, size, channels)
        if arr is None:
            errors.append((i, error))
        else:
            out[i] = arr
    return out, gray, errors


def decode_all(paths: list[Path], size: int, channels: int, out: np.ndarray, workers: int = 1) -> bool:
    """Decode every image once into `out` (N,H,W,channels), a partition at a time on the engine
    (tasks.common.engine: in this process for small data, else Dask workers, which get absolute
    paths); True when every image is grayscale. `workers` is no longer used: engine.workers is."""
    cwd = Path.cwd()
    jobs = [str(p if scheme(p) or Path(p).is_absolute() else cwd / p) for p in paths]  # URLs as they are
    all_gray = True
    start = 0
    with (
        engine.session(len(jobs), what="augment") as eng,
        tqdm(total=len(jobs), desc="augment: decode", unit="img", disable=None) as bar,
    ):
        for arrays, gray, errors in eng.map_partitions(_load_partition, jobs, size, channels):
            if errors:
                i, error = errors[0]
                raise UserError(
                    f"{paths[start + i]}: {error} (the image store changed after `clean`; re-run ingest and clean)"
                )
            out[start : start + len(arrays)] = arrays
            all_gray &= bool(gray.all())
            start += len(arrays)
            bar.update(len(arrays))
    return all_gray


def write_images(tmp: Path, files: list[Path], params: Params) -> int:
    """images.npy in `tmp`; returns the channel count. With channels=auto the images are decoded to
    RGB, and if all of them are gray only the first channel is kept (equal to decoding as L)."""
    n, size = len(files), params.image_size
    decode_channels = 3 if params.channels == "auto" else params.channels
    target = tmp / ("rgb.npy" if params.channels == "auto" else prepared_store.IMAGES)
    arr = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(n, size, size, decode_channels))
    all_gray = decode_all(files, size, decode_channels, arr, params.workers)
    if params.channels != "auto":
        arr.flush()
        return decode_channels
    channels = 1 if all_gray else 3
    if channels == 1:
        gray = np.lib.format.open_memmap(
            tmp / prepared_store.IMAGES, mode="w+", dtype=np.uint8, shape=(n, size, size, 1)
        )
        gray[:] = arr[..., :1]
        gray.flush()
        del arr
        target.unlink()
    else:
        arr.flush()
        del arr
        target.rename(tmp / prepared_store.IMAGES)
    return channels


def channel_stats(images: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of `images[rows]` on the 0..1 scale, in chunks."""
    if not len(rows):
        raise UserError("no train images to compute normalization statistics from: check the split fractions")
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(rows), chunk):
        block = images[np.sort(rows[start : start + chunk])].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
    count = len(rows) * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return [float(m) for m in mean], [float(max(s, MIN_STD)) for s in std]


def check_output_shape(params: Params, channels: int) -> None:
    """A transform that changes the image shape (a crop to another size, ToGray to 1 channel of RGB)
    would break batching in train: refuse it here, before hours of training."""
    compose = transforms.build(params.transforms, [0.5] * channels, [0.25] * channels)
    shape = (params.image_size, params.image_size, channels)
    out = compose(image=np.zeros(shape, np.uint8))["image"]
    if out.shape != shape:
        raise UserError(
            f"augment.transforms turn a {shape} image into {tuple(out.shape)}: "
            f"every transform must keep image_size and channels={channels}"
        )


# ---- reports ----------------------------------------------------------------------------------


def preview_rows(index: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to n distinct train images, taking classes in turn so every class shows."""
    train = index[(index["split"] == "train") & ~index["balance_copy"]]
    ranked = train.assign(_rank=train.groupby("label").cumcount())
    return ranked.sort_values(["_rank", "label"], kind="stable").head(n)


def preview_grid(
    images: np.ndarray, rows: list[int], compose, mean: list[float], std: list[float], draws: int
) -> np.ndarray:
    """uint8 RGB mosaic: a row per image, the stored image first, then `draws` augmented draws
    (normalized output mapped back to pixels). Cells are scaled up to at least 64 px."""
    size = images.shape[1]
    scale = max(1, math.ceil(64 / size))
    cell, pad = size * scale, 2
    grid = np.full((len(rows) * (cell + pad) + pad, (draws + 1) * (cell + pad) + pad, 3), 255, np.uint8)
    compose.set_random_seed(PREVIEW_SEED)
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for r, row in enumerate(rows):
        original = np.asarray(images[row])
        cells = [original] + [
            np.clip((compose(image=original)["image"] * s + m) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            for _ in range(draws)
        ]
        for c, img in enumerate(cells):
            big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            y, x = pad + r * (cell + pad), pad + c * (cell + pad)
            grid[y : y + cell, x : x + cell] = big  # a gray cell broadcasts over RGB
    return grid


def save_png(pixels: np.ndarray, target: Path) -> Path:
    from PIL import Image

    with atomic_path(target, suffix=".png") as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return target


def summary_markdown(index: pd.DataFrame, stats: dict, excluded: int, preview_labels: list[str], seconds: float) -> str:
    stored = index[~index["balance_copy"]]
    counts = pd.crosstab(stored["label"], stored["split"]).reindex(columns=list(SPLITS), fill_value=0)
    copies = index[index["balance_copy"]]["label"].value_counts()
    lines = [
        f"# augment: {len(stored)} images prepared ({stats['image_size']}x{stats['image_size']}, "
        f"{stats['channels']} channel{'s' if stats['channels'] > 1 else ''}) in {seconds:.1f} s",
        "",
        f"- normalization (train split, 0..1): mean {', '.join(f'{v:.4f}' for v in stats['mean'])}; "
        f"std {', '.join(f'{v:.4f}' for v in stats['std'])}",
        f"- suspected mislabels left out of train: {excluded}",
        f"- balance copies (extra train rows, augmented differently each epoch): {int(copies.sum())}",
        "",
        "## Rows per class and split",
        "",
        "| class | train | val | test | balance copies |",
        "|---|---|---|---|---|",
    ]
    for label, row in counts.iterrows():
        lines.append(f"| {label} | {row['train']} | {row['val']} | {row['test']} | {int(copies.get(label, 0))} |")
    lines.append(
        f"| **total** | {counts['train'].sum()} | {counts['val'].sum()} | {counts['test'].sum()} | {int(copies.sum())} |"
    )
    lines += [
        "",
        "## preview.png",
        "",
        "Each row is one train image: the stored (resized) image first, then augmented draws.",
        f"Rows, top to bottom: {', '.join(preview_labels)}.",
    ]
    return "\n".join(lines) + "\n"


# ---- stage ------------------------------------------------------------------------------------


def run(params: Params, paths: Paths) -> dict:
    started = time.perf_counter()
    manifest = read_manifest(paths.split, "split")
    kept, excluded = select_rows(manifest, params.exclude_suspects)
    if kept.empty:
        raise UserError(f"{paths.split} has no images to prepare")
    classes = sorted(kept["label"].unique())
    index = build_index(kept, classes, params.balance)
    store = ImageStore(paths.store)
    files = [store.location_of(i) for i in kept["image_id"]]  # local paths, or URLs (s3://...)
    prepared = Path(paths.prepared)
    with atomic_dir(prepared) as tmp:
        channels = write_images(tmp, files, params)
        check_output_shape(params, channels)
        images = prepared_store.open_images(tmp)
        train_rows = index.loc[(index["split"] == "train") & ~index["balance_copy"], "row"].to_numpy()
        mean, std = channel_stats(images, train_rows)
        stats = {
            "image_size": params.image_size,
            "channels": channels,
            "mean": mean,
            "std": std,
            "test_time_flip": params.test_time_flip,
        }
        train_tf = transforms.build(params.transforms, mean, std)
        prepared_store.write_metadata(tmp, index, classes, stats)
        transforms.save(train_tf, tmp / prepared_store.TRAIN_SPEC)
        transforms.save(transforms.build_eval(mean, std), tmp / prepared_store.EVAL_SPEC)
        shown = preview_rows(index, params.preview.images)
        grid = preview_grid(images, shown["row"].tolist(), train_tf, mean, std, params.preview.draws)
        del images  # release the memory map before the directory is renamed into place
    seconds = time.perf_counter() - started
    report_dir = paths.report_dir("augment")
    save_png(grid, report_dir / "preview.png")
    write_text(summary_markdown(index, stats, excluded, shown["label"].tolist(), seconds), report_dir / "summary.md")
    split_counts = index[~index["balance_copy"]]["split"].value_counts()
    return {
        "images": len(kept),
        "classes": len(classes),
        "channels": channels,
        "image_size": params.image_size,
        "rows": {s: int(split_counts.get(s, 0)) for s in SPLITS},
        "balance_copies": int(index["balance_copy"].sum()),
        "suspects_excluded": excluded,
        "mean": mean,
        "std": std,
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("augment", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
