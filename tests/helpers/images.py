"""Images the tests make themselves: nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(seed: int, size: int = 32, channels: int = 1) -> np.ndarray:
    """A random but structured picture (blocky shapes), distinct per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, channels), dtype=np.uint8)
    img = np.kron(small, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    return img[:, :, 0] if channels == 1 else img


def png_bytes(value: int, size: int = 16, mode: str = "L") -> bytes:
    """A flat PNG of one brightness (0..255), grey or RGB."""
    buf = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | Path, pixels: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def store_image(store: str | Path, pixels: np.ndarray, fmt: str = "PNG") -> str:
    """Write an image into a content-addressed store the way ingest does; returns its image_id."""
    from tasks.common.manifest import store_path

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    data = buffer.getvalue()
    image_id = hashlib.sha256(data).hexdigest()
    target = store_path(store, image_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return image_id


def digit_pictures(per_class: int, classes: tuple[int, ...]) -> list[tuple[np.ndarray, str]]:
    """Real pictures of consistent classes: scikit-learn's bundled digits (offline), upscaled to 32x32,
    labelled digit_<d>; the base images bench.planted.plant plants its faults among."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return [
        (
            np.asarray(
                Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
            ),
            f"digit_{digit}",
        )
        for digit in classes
        for image in digits.images[digits.target == digit][:per_class]
    ]


def cleaned_row(image_id: str, position: int, label, side: int, nbytes: int) -> dict:
    """One row of a cleaned manifest for a stored grayscale PNG (what validate reads): picture number
    `position` of class `label`, its phash the position (distinct, so no near-duplicate groups)."""
    return {
        "image_id": image_id,
        "source_path": f"{label}/{position}.png",
        "label": str(label),
        "bytes": nbytes,
        "format": "PNG",
        "width": side,
        "height": side,
        "mode": "L",
        "ingested_at": "2025-01-01T00:00:00",
        "origin": "source",
        "given_split": "",
        "pixel_hash": image_id,
        "phash": position,
    }
