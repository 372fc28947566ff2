"""Validate + split on sklearn digits (1797 8x8 images upscaled to 32x32 PNGs), with planted label
flips: seconds per stage, suspects found, recall/precision of the flips.

    python bench/validate_digits.py [--flip 0.03] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import split, validate  # noqa: E402
from tasks.common.manifest import store_path  # noqa: E402
from tasks.common.params import Paths  # noqa: E402


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (32x32 grayscale, top-left 8x8 DCT block vs its median)."""
    pixels = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    block = dctn(pixels, norm="ortho")[:8, :8].reshape(-1)
    bits = block > np.median(block[1:])
    value = int("".join("1" if b else "0" for b in bits), 2)
    return value - (1 << 64) if value >= 1 << 63 else value


def write_digits(root: Path, flip: float, seed: int) -> tuple[Paths, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    labels = digits.target.copy()
    flipped = rng.choice(len(labels), int(round(flip * len(labels))), replace=False)
    for i in flipped:
        labels[i] = rng.choice([c for c in range(10) if c != digits.target[i]])
    paths = Paths(
        store=str(root / "store"),
        cleaned=str(root / "cleaned.parquet"),
        validated=str(root / "validated.parquet"),
        split=str(root / "split.parquet"),
        reports=str(root / "reports"),
    )
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, labels)):
        img = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data = buf.getvalue()
        image_id = hashlib.sha256(data).hexdigest()
        target = store_path(paths.store, image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        rows.append(
            {
                "image_id": image_id,
                "source_path": f"{label}/{i:04d}.png",
                "label": str(label),
                "bytes": len(data),
                "format": "PNG",
                "width": 32,
                "height": 32,
                "mode": "L",
                "ingested_at": "2025-01-01T00:00:00+00:00",
                "origin": "source",
                "given_split": "",
                "pixel_hash": hashlib.sha256(np.asarray(img).tobytes()).hexdigest(),
                "phash": phash(img),
            }
        )
    # byte-identical digits would be one image in a real cleaned manifest
    frame = pd.DataFrame(rows)
    keep = ~frame["image_id"].duplicated()
    frame[keep].to_parquet(paths.cleaned, index=False)
    truth = np.zeros(len(labels), dtype=bool)
    truth[flipped] = True
    return paths, truth[keep.to_numpy()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flip", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="validate_digits_"))
    root.mkdir(parents=True, exist_ok=True)
    paths, truth = write_digits(root, args.flip, args.seed)
    start = time.perf_counter()
    summary = validate.run(validate.Params(), paths)
    validate_s = time.perf_counter() - start
    start = time.perf_counter()
    split_summary = split.run(split.Params(), paths)
    split_s = time.perf_counter() - start
    suspects = pd.read_parquet(paths.validated)["suspect_label"].to_numpy()
    hits = int((suspects & truth).sum())
    print(f"images {summary['images']}  flips planted {int(truth.sum())} ({args.flip:.0%})")
    print(
        f"validate {validate_s:.1f}s  suspects {int(suspects.sum())}  "
        f"recall {hits / max(truth.sum(), 1):.2f}  precision {hits / max(suspects.sum(), 1):.2f}"
    )
    print(f"split {split_s:.1f}s  {split_summary}")
    print(f"outputs in {root}")


if __name__ == "__main__":
    main()
