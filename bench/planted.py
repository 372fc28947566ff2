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


def _palette_trns_background(arr: np.ndarray) -> bytes:
    """Palette PNG whose background colour (the corner pixel's palette entry) is marked transparent by
    a tRNS chunk: the picture's whole background is transparent, the stored colour is the original's."""
    img = _rgb(arr).quantize(colors=255)
    return encode(img, "PNG", transparency=int(np.asarray(img)[0, 0]))


def _cutout(arr: np.ndarray, mode: str) -> bytes:
    """LA / RGBA with alpha 0 wherever the picture shows its border colour (stored there unchanged)."""
    gray = _gray(arr)
    alpha = np.where(gray == gray[0, 0], 0, 255).astype(np.uint8)
    colour = _gray(arr)[:, :, None] if mode == "LA" else np.asarray(_rgb(arr))
    return encode(Image.fromarray(np.dstack([colour, alpha]), mode=mode), "PNG")


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


def _one_bit(gray: np.ndarray) -> np.ndarray:
    """Black and white at the middle of the picture's own grey range (127.5 for one that spans 0..255,
    as the earlier fixed 127 did): a low-contrast picture keeps its shape instead of going blank."""
    return gray > (int(gray.min()) + int(gray.max())) / 2


# name suffix -> how to write an awkward-but-valid file from a clean array
AWKWARD: dict[str, Callable[[np.ndarray], bytes]] = {
    "cmyk.jpg": lambda a: encode(_rgb(a).convert("CMYK"), "JPEG", quality=95),
    "palette_transparency.png": _palette_with_transparency,
    "gray16.png": lambda a: encode(Image.fromarray(_gray(a).astype(np.uint16) * 257), "PNG"),
    "rgba.png": lambda a: encode(_rgb(a).convert("RGBA"), "PNG"),  # alpha channel, fully opaque
    "palette_trns_background.png": _palette_trns_background,
    "la_cutout.png": lambda a: _cutout(a, "LA"),
    "rgba_cutout.png": lambda a: _cutout(a, "RGBA"),
    "exif_rotated.jpg": _exif_rotated,
    "lossless.webp": lambda a: encode(_rgb(a), "WEBP", lossless=True),
    "picture.bmp": lambda a: encode(_rgb(a), "BMP"),
    "scan.tiff": lambda a: encode(_rgb(a), "TIFF"),
    "UPPER.PNG": lambda a: encode(Image.fromarray(a), "PNG"),
    "héllo wörld ünïcode.png": lambda a: encode(Image.fromarray(a), "PNG"),
    "grayscale.png": lambda a: encode(Image.fromarray(_gray(a)), "PNG"),
    "one_bit.png": lambda a: encode(Image.fromarray(_one_bit(_gray(a))), "PNG"),
}


def shifted(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Moved by (dy, dx) pixels; the uncovered edge takes the colour of the image's border."""
    fill = np.median(np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]), axis=0).astype(arr.dtype)
    out = np.empty_like(arr)
    out[...] = fill
    h, w = arr.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = arr[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _resized(arr: np.ndarray, side: int, back: bool = False) -> np.ndarray:
    h, w = arr.shape[:2]
    img = Image.fromarray(arr).resize((side, side * h // w), Image.Resampling.BICUBIC)
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC) if back else img)


def _cropped(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-2 px cut from two or more sides, resized back to the original size."""
    h, w = arr.shape[:2]
    top, left, bottom, right = (int(v) for v in rng.integers(0, 3, size=4))
    if top + bottom + left + right < 2:
        top, right = 1, 1
    part = Image.fromarray(arr[top : h - bottom, left : w - right])
    return np.asarray(part.resize((w, h), Image.Resampling.BICUBIC))


def _rotated(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = float(rng.choice([-1, 1]) * rng.uniform(2.0, 5.0))
    fill = int(np.median(np.concatenate([arr[0], arr[-1]]))) if arr.ndim == 2 else None
    img = Image.fromarray(arr).rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=fill)
    return np.asarray(img)


def _levels(arr: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(arr.astype(np.float64) * gain + offset, 0, 255).round().astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    return encode(Image.fromarray(arr), "PNG")


# kind -> (file suffix, how to write a near-duplicate of a clean array). Each kind is recorded in the
# truth's `detail` (as "<kind> of <original>") so recall can be reported per kind.
NearMaker = Callable[[np.ndarray, np.random.Generator], bytes]
NEAR_DUPLICATE_KINDS: dict[str, tuple[str, NearMaker]] = {
    "resize_up": ("png", lambda a, r: _png(_resized(a, a.shape[1] * 8 // 7))),  # 28 -> 32 px
    "resize_down": ("png", lambda a, r: _png(_resized(a, a.shape[1] * 6 // 7))),  # 28 -> 24 px
    "resize_down_up": ("png", lambda a, r: _png(_resized(a, a.shape[1] * 6 // 7, back=True))),  # 28 -> 24 -> 28
    "crop": ("png", lambda a, r: _png(_cropped(a, r))),
    "shift_1px": ("png", lambda a, r: _png(shifted(a, *[(0, 1), (1, 0), (0, -1), (-1, 0)][int(r.integers(4))]))),
    "shift_2px": ("png", lambda a, r: _png(shifted(a, int(r.choice([-2, 2])), int(r.integers(-1, 2))))),
    "rotate": ("png", lambda a, r: _png(_rotated(a, r))),
    "brightness": ("png", lambda a, r: _png(_levels(a, 1.0, float(r.choice([-1, 1]) * r.uniform(6, 20))))),
    "contrast": ("png", lambda a, r: _png(_levels(a, float(r.uniform(0.75, 0.9)), float(r.uniform(0, 10))))),
    "jpeg_q90": ("jpg", lambda a, r: encode(Image.fromarray(a), "JPEG", quality=90)),
    "jpeg_q70": ("jpg", lambda a, r: encode(Image.fromarray(a), "JPEG", quality=70)),
    "jpeg_q50": ("jpg", lambda a, r: encode(Image.fromarray(a), "JPEG", quality=50)),
    "webp_q80": ("webp", lambda a, r: encode(_rgb(a), "WEBP", quality=80)),
    "jpeg_to_png": (
        "png",
        lambda a, r: _png(np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(a), "JPEG", quality=80))))),
    ),
}
# lossless containers of the same pixels: exact duplicates (clean's `duplicate`, by pixel hash)
DUPLICATE_CONTAINERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png_copy": _png,
    "bmp": lambda a: encode(Image.fromarray(a), "BMP"),
    "tiff": lambda a: encode(Image.fromarray(a), "TIFF"),
    "webp_lossless": lambda a: encode(_rgb(a), "WEBP", lossless=True),
}


def near_duplicate(arr: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """The encoded near-duplicate of `arr` of one NEAR_DUPLICATE_KINDS kind."""
    return NEAR_DUPLICATE_KINDS[kind][1](arr, rng)


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
    near_kinds: Sequence[str] | None = None,
    confusable: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Write the planted folder under `root` and return its truth table.

    base: uint8 arrays (HxW gray or HxWx3 RGB) of one size, with folder-safe class names. Needs at
    least two classes and about (12 + len(near_kinds)) * per_fault + 20 images.
    near_kinds: NEAR_DUPLICATE_KINDS to plant (default all), per_fault originals each with one copy;
    `detail` is "<kind> of <original>". flip_fraction (0.01-0.05) of the remaining images get a wrong
    label: half to a uniformly drawn other class, half to their class's most confusable one
    (`confusable`, default: the class whose mean image is nearest); detail "really <true> (<how>)"."""
    near_kinds = list(NEAR_DUPLICATE_KINDS) if near_kinds is None else list(near_kinds)
    unknown = set(near_kinds) - set(NEAR_DUPLICATE_KINDS)
    if unknown:
        raise ValueError(f"unknown near-duplicate kinds {sorted(unknown)}; known: {list(NEAR_DUPLICATE_KINDS)}")
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
        for kind, make in DUPLICATE_CONTAINERS.items():
            ext = {"png_copy": "png", "webp_lossless": "webp"}.get(kind, kind)
            name = f"img_{i:05d}_{kind.replace('_', '')}.{ext}"  # original = name up to the last "_"
            out.write(label, name, make(arr), "duplicate", f"{kind} of {kept}")

        for kind in near_kinds:
            ext, make = NEAR_DUPLICATE_KINDS[kind]
            i, arr, label = take()
            kept = out.write(label, f"img_{i:05d}.png", png(arr), CLEAN, "original of near-duplicates")
            name = f"img_{i:05d}_{kind.replace('_', '')}.{ext}"
            out.write(label, name, make(arr, rng), "near_duplicate", f"{kind} of {kept}")

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
    flipped = remaining[: int(round(flip_fraction * len(remaining)))]
    confusable = confusable or nearest_classes(base)
    flips = {}
    for n, i in enumerate(flipped):
        label = str(base[i][1])
        if n % 2 == 0:
            flips[i] = (str(rng.choice([c for c in labels if c != label])), "uniform")
        else:
            flips[i] = (confusable.get(label) or other(label), "confusable")
    for i in remaining:
        arr, label = base[i][0], str(base[i][1])
        if i in flips:
            given, how = flips[i]
            out.write(given, f"img_{i:05d}.png", png(arr), "suspect_label", f"really {label} ({how})", true_label=label)
        else:
            out.write(label, f"img_{i:05d}.png", png(arr), CLEAN)

    truth = pd.DataFrame(out.truth, columns=TRUTH_COLUMNS).sort_values("source_path").reset_index(drop=True)
    truth.to_csv(root / "truth.csv", index=False)
    (root / "classes.json").write_text(json.dumps(labels + [RARE_CLASS]) + "\n", encoding="utf-8")
    return truth


def nearest_classes(base: Sequence[tuple[np.ndarray, str]]) -> dict[str, str]:
    """Per class, the other class whose mean (grey) image is nearest: the confusable one to flip to."""
    labels = np.array([str(label) for _, label in base])
    grey = np.stack([_gray(arr).astype(np.float64).ravel() for arr, _ in base])
    names = sorted(set(labels))
    means = np.stack([grey[labels == name].mean(axis=0) for name in names])
    dist = ((means[:, None] - means[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    return {name: names[int(np.argmin(dist[k]))] for k, name in enumerate(names)}


def kind_of(detail: str) -> str:
    """The planted kind recorded in a truth `detail`: "<kind> of <original>" (near-duplicates and
    duplicates) or "really <label> (<how>)" (label flips: uniform or confusable)."""
    text = str(detail)
    if text.startswith("really ") and text.endswith(")"):
        return text[text.rindex("(") + 1 : -1]
    return text.split(" of ")[0]


def score_kinds(truth: pd.DataFrame, flagged: pd.DataFrame, reason: str = "near_duplicate") -> dict[str, dict]:
    """Recall per planted kind of one reason: {kind: {planted, hits, recall}} (a hit is flagged with
    that reason, or, for near-duplicates, as an exact duplicate)."""
    given = flagged.drop_duplicates("source_path").set_index("source_path")["reason"]
    accepted = {reason, "duplicate"} if reason == "near_duplicate" else {reason}
    planted = truth[truth["planted_reason"] == reason]
    out = {}
    for kind, rows in planted.groupby(planted["detail"].map(kind_of), sort=True):
        hits = int(given.reindex(rows["source_path"]).isin(accepted).sum())
        out[kind] = {"planted": len(rows), "hits": hits, "recall": round(hits / len(rows), 4)}
    return out


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
