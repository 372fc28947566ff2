"""A messy labelled image folder with known faults, made from clean (array, label) pairs.

`plant(base, root, seed)` writes `root/images/<class>/<file>` (the layout ingest reads), plants every
fault the clean and validate stages must find, plus awkward-but-valid files they must keep, and
writes `root/truth.csv` (source_path, label, true_label, planted_reason, detail) and
`root/classes.json` (the class list, without the planted unknown class). `score(truth, flagged)`
gives recall and precision per reason. Deterministic for a given base and seed."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLEAN = "clean"
VALID_AWKWARD = "valid_awkward"
UNKNOWN_CLASS = "zz_unlisted"  # a folder whose name is not in classes.json
RARE_CLASS = "zz_rare"  # a listed class with only 3 images
TRUTH_COLUMNS = ["source_path", "label", "true_label", "planted_reason", "detail"]


def giant_png(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG header declaring width x height, followed by a tiny IDAT: a few hundred bytes on
    disk, gigabytes if anyone decoded it."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([arr] * 3) if arr.ndim == 2 else arr).convert("RGB")


def _gray(arr: np.ndarray) -> np.ndarray:
    return arr if arr.ndim == 2 else np.asarray(Image.fromarray(arr).convert("L"))


def _palette_with_transparency(arr: np.ndarray) -> bytes:
    img = _rgb(arr).quantize(colors=255)
    return encode(img, "PNG", transparency=255)  # index 255 is unused: the flag is set, no pixel vanishes


def _exif_rotated(arr: np.ndarray) -> bytes:
    """Pixels stored rotated 90 degrees counter-clockwise with EXIF Orientation=6 ("rotate 90 CW to
    display"): a viewer, and tasks.common.images.decode, shows the original picture."""
    img = _rgb(np.rot90(arr).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _ramp(shape: tuple[int, ...], angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = np.round(255 * (ramp - ramp.min()) / (ramp.max() - ramp.min())).astype(np.uint8)
    return np.dstack([ramp] * shape[2]) if len(shape) == 3 else ramp


# name suffix -> how to write an awkward-but-valid file from a clean array
AWKWARD: dict[str, Callable[[np.ndarray], bytes]] = {
    "cmyk.jpg": lambda a: encode(_rgb(a).convert("CMYK"), "JPEG", quality=95),
    "palette_transparency.png": _palette_with_transparency,
    "gray16.png": lambda a: encode(Image.fromarray(_gray(a).astype(np.uint16) * 257), "PNG"),
    "rgba.png": lambda a: encode(_rgb(a).convert("RGBA"), "PNG"),
    "exif_rotated.jpg": _exif_rotated,
    "lossless.webp": lambda a: encode(_rgb(a), "WEBP", lossless=True),
    "picture.bmp": lambda a: encode(_rgb(a), "BMP"),
    "scan.tiff": lambda a: encode(_rgb(a), "TIFF"),
    "UPPER.PNG": lambda a: encode(Image.fromarray(a), "PNG"),
    "héllo wörld ünïcode.png": lambda a: encode(Image.fromarray(a), "PNG"),
    "grayscale.png": lambda a: encode(Image.fromarray(_gray(a)), "PNG"),
    "one_bit.png": lambda a: encode(Image.fromarray(_gray(a) > 127), "PNG"),
}


class _Writer:
    def __init__(self, images: Path):
        self.images = images
        self.truth: list[dict] = []

    def write(
        self, label: str, name: str, data: bytes, reason: str, detail: str = "", true_label: str | None = None
    ) -> str:
        rel = f"{label}/{name}"
        path = self.images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.truth.append(
            {
                "source_path": rel,
                "label": label,
                "true_label": true_label or label,
                "planted_reason": reason,
                "detail": detail,
            }
        )
        return rel


def plant(
    base: Sequence[tuple[np.ndarray, str]],
    root: str | Path,
    seed: int = 0,
    per_fault: int = 2,
    flip_fraction: float = 0.02,
) -> pd.DataFrame:
    """Write the planted folder under `root` and return its truth table.

    base: uint8 arrays (HxW gray or HxWx3 RGB) of one size, with folder-safe class names. Needs at
    least two classes and about 12 * per_fault + 20 images."""
    root = Path(root)
    labels = sorted({str(label) for _, label in base})
    if len(labels) < 2 or any("/" in label or label.startswith(".") for label in labels):
        raise ValueError("plant needs at least two classes with folder-safe names")
    rng = np.random.default_rng(seed)
    order = iter(rng.permutation(len(base)).tolist())
    out = _Writer(root / "images")
    shape = base[0][0].shape

    def take() -> tuple[int, np.ndarray, str]:
        index = next(order)
        return index, base[index][0], str(base[index][1])

    def other(label: str) -> str:
        return labels[(labels.index(label) + 1) % len(labels)]

    def png(arr: np.ndarray) -> bytes:
        return encode(Image.fromarray(arr), "PNG")

    for k in range(per_fault):
        for kind in ("empty", "truncated", "garbage"):
            i, arr, label = take()
            whole = png(arr)
            data = {"empty": b"", "truncated": whole[: len(whole) * 3 // 5], "garbage": rng.bytes(2000)}[kind]
            out.write(label, f"corrupt_{kind}_{k}.png", data, "corrupt", kind)
        out.write(labels[k % len(labels)], f"huge_header_{k}.png", giant_png(), "too_large", "60000x60000 header")
        i, arr, label = take()
        out.write(label, f"tiny_{k}.png", png(np.asarray(Image.fromarray(arr).resize((4, 4)))), "too_small", "4x4")
        level = int(rng.integers(30, 220))
        out.write(
            labels[k % len(labels)],
            f"blank_{k}.png",
            png(np.full(shape, level, np.uint8)),
            "low_information",
            "constant",
        )
        near = np.clip(level + rng.integers(-1, 2, size=shape), 0, 255).astype(np.uint8)
        out.write(labels[k % len(labels)], f"nearly_blank_{k}.png", png(near), "low_information", "near-constant")

        i, arr, label = take()
        kept = out.write(label, f"img_{i:05d}.png", png(arr), CLEAN, "original of duplicates")
        out.write(label, f"img_{i:05d}_copy.png", png(arr), "duplicate", f"byte copy of {kept}")
        out.write(label, f"img_{i:05d}_bmp.bmp", encode(Image.fromarray(arr), "BMP"), "duplicate", f"BMP of {kept}")

        i, arr, label = take()
        kept = out.write(label, f"img_{i:05d}.png", png(arr), CLEAN, "original of near-duplicates")
        brighter = np.clip(arr.astype(np.int16) + 6, 0, 255).astype(np.uint8)
        out.write(label, f"img_{i:05d}_bright.png", png(brighter), "near_duplicate", f"brightness +6 of {kept}")
        out.write(
            label,
            f"img_{i:05d}_jpeg.jpg",
            encode(Image.fromarray(arr), "JPEG", quality=90),
            "near_duplicate",
            f"JPEG q90 of {kept}",
        )

        for variant in ("copy", "brighter copy"):
            i, arr, label = take()
            first = out.write(label, f"img_{i:05d}.png", png(arr), "label_conflict", f"also under {other(label)}")
            pixels = arr if variant == "copy" else np.clip(arr.astype(np.int16) + 6, 0, 255).astype(np.uint8)
            out.write(
                other(label),
                f"img_{i:05d}_conflict.png",
                png(pixels),
                "label_conflict",
                f"{variant} of {first}",
                true_label=label,
            )

        noise = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out.write(labels[k % len(labels)], f"noise_{k}.png", png(noise), "outlier", "uniform noise")
        angle = 2 * np.pi * k / per_fault  # each gradient runs another way: outliers, not near-duplicates
        out.write(
            labels[(k + 1) % len(labels)],
            f"gradient_{k}.png",
            png(_ramp(shape, angle)),
            "outlier",
            f"flat gradient at {np.degrees(angle):.0f} degrees",
        )

        i, arr, label = take()
        out.write(UNKNOWN_CLASS, f"img_{i:05d}.png", png(arr), "unknown_label", "class not listed", true_label=label)

    for suffix, make in AWKWARD.items():
        i, arr, label = take()
        out.write(label, f"img_{i:05d}_{suffix}", make(arr), VALID_AWKWARD, suffix)
    for _ in range(3):
        i, arr, label = take()
        out.write(RARE_CLASS, f"img_{i:05d}.png", png(arr), "rare_class", "3 images", true_label=label)

    remaining = list(order)
    flips = set(remaining[: int(round(flip_fraction * len(remaining)))])
    for i in remaining:
        arr, label = base[i][0], str(base[i][1])
        if i in flips:
            out.write(other(label), f"img_{i:05d}.png", png(arr), "suspect_label", f"really {label}", true_label=label)
        else:
            out.write(label, f"img_{i:05d}.png", png(arr), CLEAN)

    truth = pd.DataFrame(out.truth, columns=TRUTH_COLUMNS).sort_values("source_path").reset_index(drop=True)
    truth.to_csv(root / "truth.csv", index=False)
    (root / "classes.json").write_text(json.dumps(labels + [RARE_CLASS]) + "\n", encoding="utf-8")
    return truth


def score(truth: pd.DataFrame, flagged: pd.DataFrame, reasons: Sequence[str] | None = None) -> pd.DataFrame:
    """Per reason: images planted, images flagged, hits (flagged with the planted reason), recall,
    precision. `flagged` is a reports/<stage>/flagged.csv frame (matched on source_path)."""
    planted = truth.set_index("source_path")["planted_reason"]
    given = flagged.drop_duplicates("source_path").set_index("source_path")["reason"]
    reasons = reasons or sorted((set(planted) | set(given)) - {CLEAN, VALID_AWKWARD})
    rows = []
    for reason in reasons:
        planted_here = set(planted.index[planted == reason])
        flagged_here = set(given.index[given == reason])
        hits = len(planted_here & flagged_here)
        rows.append(
            {
                "reason": reason,
                "planted": len(planted_here),
                "flagged": len(flagged_here),
                "hits": hits,
                "recall": hits / len(planted_here) if planted_here else float("nan"),
                "precision": hits / len(flagged_here) if flagged_here else float("nan"),
            }
        )
    return pd.DataFrame(rows)
