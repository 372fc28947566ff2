"""augment: split manifest -> training-ready store. Every image is decoded once here (orientation
fixed, mode normalized, resized) into one uint8 array that train memory-maps, so an epoch decodes no
image file. Also writes the augmentation pipeline in albumentations' own format (train loads it),
the train split's channel statistics, optional class balancing and a preview grid."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm import tqdm

from tasks.atomic import atomic_dir, atomic_path, write_text
from tasks.entry import stage_main
from tasks.errors import UserError
from tasks.images import DecodeError, decode, to_array
from tasks.manifest import read_manifest, store_path
from tasks.params import Paths, Strict
from tasks.transforms import EVAL_SPEC, TRAIN_SPEC, TransformStep, compose, save_spec

INDEX_COLUMNS = ["row", "image_id", "label", "label_idx", "split", "balance_copy"]


def _default_transforms() -> list[TransformStep]:
    # Mild geometry suits digits and garments alike; no flips (a mirrored 2 is not a 2).
    return [TransformStep(name="Affine", scale=[0.9, 1.1], translate_percent=[-0.08, 0.08], rotate=[-10, 10], p=0.7)]


class Balance(Strict):
    enabled: bool = False
    target_ratio: float = Field(0.5, gt=0, le=1)  # each train class topped up to this x the largest


class Preview(Strict):
    images: int = Field(8, ge=1)
    draws: int = Field(6, ge=1)


class Params(Strict):
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal["auto", 1, 3] = "auto"
    transforms: list[TransformStep] = Field(default_factory=_default_transforms)
    balance: Balance = Balance()
    preview: Preview = Preview()
    exclude_suspects: bool = True  # suspect_label images leave the train split only; val/test unchanged
    seed: int = 0


def run(params: Params, paths: Paths) -> dict:
    manifest = read_manifest(paths.split, "split").reset_index(drop=True)
    if manifest.empty:
        raise UserError(f"{paths.split} has no images")
    images, is_gray = _decode_all(manifest, paths.store, params.image_size)
    channels = (1 if all(is_gray) else 3) if params.channels == "auto" else params.channels
    images = _to_channels(images, channels)

    classes = sorted(manifest["label"].astype(str).unique())
    index = _index(manifest, classes, params)
    train_rows = index.loc[(index["split"] == "train") & ~index["balance_copy"], "row"].to_numpy()
    if len(train_rows) == 0:
        raise UserError("the train split is empty: nothing to compute statistics on")
    mean, std = _channel_stats(images, train_rows)

    with atomic_dir(paths.prepared) as tmp:
        np.save(tmp / "images.npy", images)
        index.to_parquet(tmp / "index.parquet", index=False)
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2))
        stats = {"image_size": params.image_size, "channels": channels, "mean": mean, "std": std}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        save_spec(compose(params.transforms, mean, std), tmp / TRAIN_SPEC)
        save_spec(compose([], mean, std), tmp / EVAL_SPEC)

    report_dir = paths.report_dir("augment")
    _preview(images, index, classes, params, report_dir / "preview.png")
    counts = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    copies = int(index["balance_copy"].sum())
    write_text(_summary(counts, copies, stats, params), report_dir / "summary.md")
    return {"images": int(len(images)), "channels": channels, "image_size": params.image_size,
            "classes": len(classes), "balance_copies": copies,
            "train_rows": int((index["split"] == "train").sum()), "mean": mean, "std": std}


def _decode_all(manifest: pd.DataFrame, store: str, size: int) -> tuple[list[np.ndarray], list[bool]]:
    arrays, gray = [], []
    for image_id in tqdm(manifest["image_id"], desc="augment: decode", unit="img", disable=None):
        try:
            img = decode(store_path(store, image_id))
        except (DecodeError, OSError) as exc:  # clean decoded it before: the store was changed since
            raise UserError(f"{image_id}: cannot decode from the store ({exc}); re-run ingest and clean") from None
        arr = to_array(img, size, 1 if img.mode == "L" else 3)
        # an RGB file whose channels are identical is a grayscale picture
        gray.append(arr.shape[2] == 1 or bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()))
        arrays.append(arr)
    return arrays, gray


def _to_channels(arrays: list[np.ndarray], channels: int) -> np.ndarray:
    out = np.empty((len(arrays), *arrays[0].shape[:2], channels), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        if arr.shape[2] == channels:
            out[i] = arr
        elif channels == 3:
            out[i] = np.repeat(arr, 3, axis=2)
        else:  # ITU-R 601 luma, as PIL's convert("L")
            out[i, ..., 0] = np.round(arr @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return out


def _index(manifest: pd.DataFrame, classes: list[str], params: Params) -> pd.DataFrame:
    label_idx = {c: i for i, c in enumerate(classes)}
    index = pd.DataFrame({
        "row": np.arange(len(manifest)),
        "image_id": manifest["image_id"].to_numpy(),
        "label": manifest["label"].astype(str).to_numpy(),
        "split": manifest["split"].to_numpy(),
        "balance_copy": False,
    })
    index["label_idx"] = index["label"].map(label_idx).astype(int)
    if params.exclude_suspects and "suspect_label" in manifest:
        suspect = manifest["suspect_label"].fillna(False).astype(bool).to_numpy()
        index = index[~(suspect & (index["split"] == "train").to_numpy())]
    if params.balance.enabled:
        index = pd.concat([index, _balance_copies(index, params.balance.target_ratio, params.seed)], ignore_index=True)
    return index[INDEX_COLUMNS].reset_index(drop=True)


def _balance_copies(index: pd.DataFrame, target_ratio: float, seed: int) -> pd.DataFrame:
    """Extra train rows for minority classes, repeating their images (augmented anew each epoch)."""
    train = index[index["split"] == "train"]
    counts = train["label"].value_counts()
    target = math.ceil(target_ratio * counts.max())
    rng = np.random.default_rng(seed)
    extra = []
    for label, count in sorted(counts.items()):
        if count < target:
            members = train[train["label"] == label]
            picks = np.resize(rng.permutation(len(members)), target - count)  # cycle through every image
            extra.append(members.iloc[picks].assign(balance_copy=True))
    return pd.concat(extra) if extra else index.iloc[0:0]


def _channel_stats(images: np.ndarray, rows: np.ndarray) -> tuple[list[float], list[float]]:
    pixels = images[rows].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = pixels.std(axis=0)
    return [round(float(m), 6) for m in pixels.mean(axis=0)], [round(float(max(s, 1e-6)), 6) for s in std]


def _preview(images: np.ndarray, index: pd.DataFrame, classes: list[str], params: Params, target: Path) -> None:
    """N train images (one per class first) x K augmented draws; column 0 is the original."""
    from PIL import Image

    train = index[(index["split"] == "train") & ~index["balance_copy"]]
    picked = train.groupby("label", sort=True).head(1)
    picked = pd.concat([picked, train.drop(picked.index)]).head(params.preview.images)
    pipeline = compose(params.transforms, seed=params.seed)
    tiles = []
    for row in picked["row"]:
        original = images[row]
        draws = [pipeline(image=original)["image"] for _ in range(params.preview.draws)]
        tiles.append(np.concatenate([original, *[np.broadcast_to(d.reshape(original.shape), original.shape) for d in draws]], axis=1))
    grid = np.concatenate(tiles, axis=0)
    if grid.shape[2] == 1:
        grid = grid[..., 0]
    scale = max(1, 96 // params.image_size)
    picture = Image.fromarray(np.ascontiguousarray(grid)).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    with atomic_path(target, suffix=".png") as tmp:
        picture.save(tmp, format="PNG")


def _summary(counts: pd.DataFrame, copies: int, stats: dict, params: Params) -> str:
    from tasks.reports import markdown_table

    steps = ", ".join(f"{s.name}({', '.join(f'{k}={v}' for k, v in s.arguments.items())})" for s in params.transforms) or "none"
    lines = [
        f"# augment: {int(counts.values.sum())} index rows, {params.image_size}x{params.image_size}, {stats['channels']} channel(s)",
        "", f"- train transforms: {steps}", f"- normalize: mean {stats['mean']}, std {stats['std']} (train split)",
        f"- class balancing: {'on, target ratio ' + str(params.balance.target_ratio) if params.balance.enabled else 'off'}"
        f" ({copies} extra train rows)", "", markdown_table(counts.reset_index().rename(columns={"label": "class"})),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return stage_main("augment", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
