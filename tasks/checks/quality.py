"""What clean needs to know about one image, computed in a worker process: whether it decodes, its
size, how much information it carries, an exact pixel hash, a perceptual hash and cheap features for
the outlier check. Kept apart from tasks/clean.py so workers import only numpy, PIL and scipy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.checks.phash import ALIGNED_SIDE, aligned_copy, aligned_hash, dct32
from tasks.common.images import DecodeError, decode, probe

FEATURE_SIDE = 8  # outlier features: a standardized 8x8 thumbnail (coarse: robust to 1-bit, JPEG) + 2 statistics
STRUCTURE_BAND = 6  # DCT frequencies (of 32) that carry an image's large-scale structure
DETAIL_BAND = 8  # ...and above which its fine detail lies
COPY_SIZE = ALIGNED_SIDE * ALIGNED_SIDE  # near-duplicate check: the aligned grey copy (tasks.checks.phash)
FEATURE_SIZE = FEATURE_SIDE * FEATURE_SIDE + 2  # the thumbnail and the two spectral shares


@dataclass
class Inspection:
    status: str  # "ok", "corrupt" or "too_large"
    detail: str = ""
    width: int = 0  # decoded size (after EXIF orientation)
    height: int = 0
    pixel_std: float = 0.0  # the largest of the channels' standard deviations (information_measures)
    dominant_fraction: float = 0.0  # the smallest of the channels' shares of their most common value
    # the picture's mean colour less its mean brightness, per channel (colour_offsets; 0 for grey)
    chroma_r: float = 0.0
    chroma_g: float = 0.0
    chroma_b: float = 0.0
    pixel_hash: str = ""
    phash: int = 0  # unsigned 64-bit, of the aligned copy (tasks.checks.phash.aligned_hash)
    # the aligned grey copy near-duplicates are verified on (tasks.checks.similarity), float32 [COPY_SIZE]
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def pixel_hash(img: Image.Image) -> str:
    """sha256 of the decoded pixels and their shape. An RGB picture whose channels are all equal is
    hashed as grayscale, so the same picture stored as gray PNG and as 24-bit BMP hashes the same."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 3 and (arr == arr[:, :, :1]).all():
        arr = arr[:, :, 0]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    digest = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]}x{channels}:".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def thumbnail(gray32: np.ndarray, side: int) -> np.ndarray:
    """side x side block means, standardized (zero mean, unit std): layout without brightness/contrast."""
    block = gray32.shape[0] // side
    thumb = gray32.reshape(side, block, side, block).mean(axis=(1, 3))
    return (thumb - thumb.mean()) / max(thumb.std(), 1e-6)


def spectral_shares(coeffs: np.ndarray) -> tuple[float, float]:
    """Logs of two shares of a 32x32 image's AC energy (DCT coefficients `coeffs`): below 6 cycles
    per side (large-scale structure: every real picture has a shape, uniform noise spreads its
    energy evenly and keeps ~3% there) and above 8 (fine detail: edges put a few percent there, a
    flat gradient ~0.2%)."""
    energy = coeffs**2
    ac = max(energy.sum() - energy[0, 0], 1e-9)
    low = (energy[:STRUCTURE_BAND, :STRUCTURE_BAND].sum() - energy[0, 0]) / ac
    high = (energy.sum() - energy[:DETAIL_BAND, :DETAIL_BAND].sum()) / ac
    return float(np.log(max(low, 1e-9))), float(np.log(max(high, 1e-9)))


def features(gray32: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Cheap description of what an image shows: its 8x8 thumbnail, standardized (zero mean, unit
    std) so that brightness, contrast and how the picture is stored (1-bit, 16-bit, JPEG) matter
    less than its layout, then the two spectral shares (see spectral_shares)."""
    thumb = thumbnail(gray32, FEATURE_SIDE)
    return np.concatenate([thumb.ravel(), spectral_shares(coeffs)]).astype(np.float32)


# Every per-picture measure below comes from PIL's per-band histograms (256 counts a band, computed in
# C): exact for uint8 pictures and no temporary array the size of the picture. A 40-megapixel photo
# would need about 1 GB of float64 per worker for a numpy std over its three channels.
_LEVELS = np.arange(256, dtype=np.float64)


def band_histograms(img: Image.Image) -> np.ndarray:
    """[bands, 256] pixel counts of an L or RGB picture."""
    return np.asarray(img.histogram(), dtype=np.float64).reshape(-1, 256)


def _band_stats(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per band of [bands, 256] counts."""
    n = counts.sum(axis=1)
    mean = counts @ _LEVELS / n
    variance = np.maximum(counts @ _LEVELS**2 / n - mean**2, 0.0)
    return mean, np.sqrt(variance)


def information_measures(counts: np.ndarray) -> tuple[float, float]:
    """(largest per-channel std, smallest per-channel share of the most common value) of a picture's
    band_histograms. Per channel, not of a grey copy: a picture whose ink and background differ in hue
    but hardly in brightness is blank in grey and plain to see in colour (and to the network). On a grey
    picture, stored as L or as RGB, both are the grey figures."""
    _, std = _band_stats(counts)
    return float(std.max()), float((counts.max(axis=1) / counts.sum(axis=1)).min())


LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def colour_offsets(counts: np.ndarray) -> tuple[float, float, float]:
    """Mean of (R, G, B) minus the luminance, over the picture (from its band_histograms): where its
    colour lies away from grey. A brightness shift of every channel leaves it as it is, a contrast or
    saturation change scales it; a grey picture gives zeros (the near-duplicate colour check,
    tasks.checks.similarity.colours_agree)."""
    if len(counts) < 3:
        return 0.0, 0.0, 0.0
    mean, _ = _band_stats(counts[:3])
    red, green, blue = mean - mean @ LUMINANCE
    return float(red), float(green), float(blue)


# a picture whose luminance keeps less than this share of its strongest channel's contrast is seen in
# grey along its colours' first principal axis instead (structure_gray). The benchmark's colour draws
# keep at least 40 / 255 = 0.157 by construction, so none of them is seen this way
HUE_ONLY_CONTRAST = 0.15
_PROJECTED_SIDE = 256  # a hue-only picture is projected at most this large (the checks use 32-64 px)


def structure_gray(img: Image.Image, strongest: float | None = None) -> Image.Image:
    """The grey picture the shape checks look at (near-duplicates, outliers): PIL's luminance, unless
    that keeps under HUE_ONLY_CONTRAST of the strongest channel's contrast (`strongest`: the largest
    per-channel std, computed when None). Ink and background of one brightness in different hues are
    flat noise in luminance, and an outlier "like noise". Then the projection on the colours' first
    principal axis, weights summing to 1 in size (grey levels stay grey levels) with the largest
    positive, centred on the mean brightness, of the picture reduced to at most _PROJECTED_SIDE."""
    gray = img.convert("L")
    if img.mode != "RGB":
        return gray
    if strongest is None:
        strongest = information_measures(band_histograms(img))[0]
    if strongest == 0 or _band_stats(band_histograms(gray))[1][0] >= HUE_ONLY_CONTRAST * strongest:
        return gray
    if max(img.size) > _PROJECTED_SIDE:
        factor = _PROJECTED_SIDE / max(img.size)
        size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        img = img.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(img, dtype=np.float64).reshape(-1, 3)
    centred = pixels - pixels.mean(axis=0)
    axis = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    axis = axis / np.abs(axis).sum() * np.sign(axis[np.argmax(np.abs(axis))])
    projected = centred @ axis + pixels.mean(axis=0) @ LUMINANCE
    return Image.fromarray(np.clip(np.rint(projected), 0, 255).astype(np.uint8).reshape(img.height, img.width))


def _gray32(gray: Image.Image) -> np.ndarray:
    return np.asarray(gray.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)


def near_duplicate_copy(path: str | Path, max_pixels: int) -> np.ndarray:
    """The aligned copy `inspect` keeps for near-duplicates, for one image already known to decode."""
    return aligned_copy(structure_gray(decode(path, max_pixels=max_pixels))).ravel()


def inspect(path: str | Path, max_pixels: int) -> Inspection:
    """Header first: an image declaring more than `max_pixels` is never decoded (nor allocated)."""
    try:
        header = probe(path)
    except DecodeError as exc:
        return Inspection("corrupt", str(exc))
    if header.pixels > max_pixels:
        return Inspection("too_large", f"{header.width}x{header.height} = {header.pixels} pixels > {max_pixels}")
    try:
        img = decode(path, max_pixels=max_pixels)
    except DecodeError as exc:
        return Inspection("corrupt", str(exc))
    counts = band_histograms(img)
    spread, dominant = information_measures(counts)
    chroma = colour_offsets(counts)
    gray = structure_gray(img, spread)
    gray32 = _gray32(gray)
    coeffs = dct32(gray32)
    copy = aligned_copy(gray)
    return Inspection(
        "ok",
        width=img.width,
        height=img.height,
        pixel_std=spread,
        dominant_fraction=dominant,
        chroma_r=chroma[0],
        chroma_g=chroma[1],
        chroma_b=chroma[2],
        pixel_hash=pixel_hash(img),
        phash=aligned_hash(copy),
        thumbnail=copy.ravel(),
        features=features(gray32, coeffs),
    )


def inspect_chunk(items: list[tuple[str, str]], max_pixels: int) -> list[tuple[str, Inspection]]:
    """Worker entry point: (image_id, path) pairs in, (image_id, Inspection) pairs out."""
    return [(image_id, inspect(path, max_pixels)) for image_id, path in items]


def inspect_partition(image_ids: list[str], store: str, max_pixels: int) -> list[tuple[str, Inspection | None]]:
    """Engine task (tasks.common.engine): inspect stored images named by id in the `store` it is given
    (absolute path or URL: tasks.common.store); None for an id not in the store. Decoder messages name
    a file by its base name (tasks.common.images), so reports and the cache read the same wherever it ran."""
    from tasks.common.store import ImageStore

    images = ImageStore(store)
    out: list[tuple[str, Inspection | None]] = []
    for image_id, src in images.sources(image_ids):  # a remote store's are fetched a batch at a time
        if src is None:
            out.append((image_id, None))
            continue
        out.append((image_id, inspect(src, max_pixels)))
    return out


def thumbnail_partition(image_ids: list[str], store: str, max_pixels: int) -> np.ndarray:
    """Engine task: near_duplicate_copy of stored images named by id, float32 [k, COPY_SIZE]."""
    from tasks.common.store import ImageStore

    images = ImageStore(store)
    out = np.zeros((len(image_ids), COPY_SIZE), dtype=np.float32)
    for i, image_id in enumerate(image_ids):
        out[i] = near_duplicate_copy(images.source(image_id), max_pixels=max_pixels)
    return out
