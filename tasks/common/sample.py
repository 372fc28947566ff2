"""Bundled sample data: scikit-learn's handwritten digits written out as real PNG files, so the
first README command works offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tasks.common.atomic import atomic_dir, write_text
from tasks.common.errors import UserError

SAMPLE_PREFIX = "sample:"
SAMPLES = ("digits",)


def materialize_sample(source: str, cache_dir: Path, upscale: int) -> Path:
    """Write the sample once as <cache_dir>/<name>_x<upscale>/<label>/<index>.png and return the folder."""
    name = source[len(SAMPLE_PREFIX) :]
    if name not in SAMPLES:
        raise UserError(
            f"ingest.source: unknown sample {source!r} (available: {', '.join(SAMPLE_PREFIX + s for s in SAMPLES)})"
        )
    if upscale < 1:
        raise UserError("ingest.sample_upscale: must be >= 1")
    root = cache_dir / f"{name}_x{upscale}"
    done = cache_dir / f"{name}_x{upscale}.done"
    if done.is_file() and root.is_dir():
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    with atomic_dir(root) as tmp:
        for index, (image, target) in enumerate(
            tqdm(
                zip(digits.images, digits.target),
                total=len(digits.target),
                desc="sample:digits",
                unit="img",
                disable=None,
            )
        ):
            pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)  # 0..16 gray levels -> 0..255
            img = Image.fromarray(pixels, mode="L").resize((8 * upscale, 8 * upscale), Image.Resampling.BICUBIC)
            folder = tmp / str(int(target))
            folder.mkdir(exist_ok=True)
            img.save(folder / f"{index:04d}.png", optimize=False)
    write_text(f"{len(digits.target)} images\n", done)
    return root
