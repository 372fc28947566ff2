"""Image decoding shared by every stage: header probing without decoding, full decoding with
orientation and mode normalization, and conversion to fixed-size uint8 arrays."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Formats PIL decodes that users actually keep in image folders (upper/lower case both accepted).
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
# We enforce our own pixel limit from the header; PIL's own bomb check must not fire first with a
# traceback-shaped error, so it is disabled and replaced by `Header.pixels` checks in the callers.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(Exception):
    """The bytes are not a fully decodable image; the message is one line for a report."""


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageBytes:
    """An image's bytes with the name a file of them would have (a store's image id): what a remote
    store (tasks.common.store) hands the decoders, so their messages read as for a file on disk."""

    name: str
    data: bytes


# what every decoder below accepts (see _open)
Source = str | Path | bytes | ImageBytes | BinaryIO


class _NamedBuffer(io.BytesIO):
    """PIL writes a file object into some messages with %r: the name then stands where a file's
    (base) name would, not a memory address that differs on every run."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._shown = name

    def __repr__(self) -> str:
        return repr(self._shown)


def _open(src: Source) -> Image.Image:
    """Paths, bytes, ImageBytes and open binary file objects all decode the same way."""
    if isinstance(src, ImageBytes):
        return Image.open(_NamedBuffer(src.data, src.name))
    return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)


def probe(src: Source) -> Header:
    """Read only the header: format, size and mode. Never allocates the pixel buffer."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(src) as img:
                return Header(img.format or "", int(img.width), int(img.height), img.mode)
    except Exception as exc:  # PIL raises many types for garbage input
        raise DecodeError(_describe(exc, src)) from None


def _describe(exc: Exception, src: Source) -> str:
    """One line for a report. A file is named by its base name only, so the message is the same
    whichever folder (or Dask worker's mount) it was read from, and the 200-character cut never
    falls inside a long directory."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(src, (str, Path)) and str(src) in text:
        text = text.replace(str(src), Path(src).name)
    return f"{type(exc).__name__}: {text}"[:200]


# header modes that can carry transparency ("P" only with a tRNS chunk)
ALPHA_MODES = ("LA", "RGBA", "PA", "La", "RGBa", "P")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES[:-1] or (img.mode == "P" and "transparency" in img.info)


def background_colour(rgba: np.ndarray) -> tuple[int, int, int] | None:
    """The colour transparency is composited onto, decided per image from its own pixels (so
    prediction needs no statistics of the data set): None when every pixel is opaque (alpha is
    dropped, nothing changes); else the median colour of the opaque pixels on the image's border
    when at least half of the border is opaque (the picture's own background shows around a
    transparent hole); else the median colour STORED under the transparent border pixels: a palette
    PNG whose background colour is marked transparent (tRNS) gets exactly that colour back, and so
    does a cut-out saved over black (Fashion-MNIST, digits) or white. Never a fixed white, which
    turned black-background pictures into outliers."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return None
    border = np.concatenate([rgba[0], rgba[-1], rgba[1:-1, 0], rgba[1:-1, -1]])
    opaque = border[border[:, 3] == 255]
    chosen = opaque if 2 * len(opaque) >= len(border) else border[border[:, 3] < 255]
    return tuple(int(v) for v in np.median(chosen[:, :3], axis=0).round())


def colour_name(colour: tuple[int, int, int] | None) -> str:
    """'' (no transparency) or '#rrggbb': the manifest's alpha_background column."""
    return "" if colour is None else "#{:02x}{:02x}{:02x}".format(*colour)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparency onto background_colour(...) (alpha dropped when fully opaque)."""
    rgba = img.convert("RGBA")
    colour = background_colour(np.asarray(rgba))
    if colour is None:
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, (*colour, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def alpha_background(src: Source, max_pixels: int | None = None) -> str:
    """Which background decode() composites this image's transparency onto: '' when it has no
    transparency (or every pixel is opaque), else '#rrggbb'. Raises DecodeError like decode()."""
    header = probe(src)
    if max_pixels is not None and header.pixels > max_pixels:
        raise DecodeError(f"{header.width}x{header.height} exceeds the pixel limit {max_pixels}")
    if header.mode not in ALPHA_MODES:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(src) as img:
                img.load()
                if not _has_alpha(img):
                    return ""
                return colour_name(background_colour(np.asarray(ImageOps.exif_transpose(img).convert("RGBA"))))
    except Exception as exc:
        raise DecodeError(_describe(exc, src)) from None


def normalize_mode(img: Image.Image) -> Image.Image:
    """Every decoded image becomes 'L' (grayscale) or 'RGB', whatever it was stored as."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        # 16-bit and float images: scale their actual range to 0..255 instead of clipping at 255
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if _has_alpha(img):
        flat = _flatten_alpha(img)
        return flat.convert("L") if mode in ("LA", "La") else flat
    if mode == "P":
        return img.convert("RGB")
    # CMYK, YCbCr, LAB, HSV, ...
    return img.convert("RGB")


def decode(src: Source, max_pixels: int | None = None) -> Image.Image:
    """Fully decode, apply EXIF orientation and normalize the mode to L or RGB.

    Raises DecodeError for anything that is not a complete image, and for images over `max_pixels`
    (checked from the header before any pixel is allocated)."""
    header = probe(src)
    if max_pixels is not None and header.pixels > max_pixels:
        raise DecodeError(f"{header.width}x{header.height} exceeds the pixel limit {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(src) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return normalize_mode(img)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(_describe(exc, src)) from None


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize to size x size and return uint8 HxWxC with C = channels (1 or 3)."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr
