"""The feedback quarantine (paths.feedback): the one owner of its format. `imgcls serve` writes it,
ingest reads it and admits what its feedback policy allows; nothing here is trained on before that.

A submission is two files side by side, named by the image's SHA-256 and a digest of its label:

    <sha256>-<label digest>.<ext>     the uploaded bytes, unchanged
    <sha256>-<label digest>.json      the sidecar: who (client address, token id), when, what
                                      (label, sha256, size, format, width, height)

The sidecar is written after the image, so an image without one is an upload still in progress. The
label is data inside the JSON, never part of a path, and ingest checks every field again (the folder
is on disk: anyone who can write there could have put anything in it)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.common.atomic import atomic_path

FORMAT_VERSION = 1
# stored files get an extension ingest recognises; formats PIL reads but ingest would skip are refused
EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "BMP": ".bmp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".ppm",
}
MAX_LABEL_CHARS = 100
MAX_SIDECAR_BYTES = 64 * 1024
_STEM = re.compile(r"[0-9a-f]{64}-[0-9a-f]{12}")


class Client(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str = Field(max_length=200)
    token_id: str = Field(max_length=64)


class Record(BaseModel):
    """The sidecar."""

    model_config = ConfigDict(extra="forbid")
    format_version: Literal[1] = FORMAT_VERSION
    image: str = Field(max_length=200)
    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0)
    format: str = Field(max_length=10)
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    received_at: str = Field(max_length=40)
    client: Client


class FeedbackError(ValueError):
    """A submission that cannot be trusted as written; the message is one line."""


def check_label(label: str) -> str:
    """The label as stored: stripped, non-blank, printable, at most MAX_LABEL_CHARS."""
    name = str(label).strip()
    if not name:
        raise FeedbackError("label is blank")
    if len(name) > MAX_LABEL_CHARS:
        raise FeedbackError(f"label longer than {MAX_LABEL_CHARS} characters")
    if not name.isprintable():
        raise FeedbackError("label contains control characters")
    return name


def submission_id(sha256: str, label: str) -> str:
    return f"{sha256}-{hashlib.sha256(label.encode('utf-8')).hexdigest()[:12]}"


def token_id(token: str) -> str:
    """What a sidecar records about the writer's token: a prefix of its SHA-256, never the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def write_submission(
    root: str | Path,
    data: bytes,
    label: str,
    fmt: str,
    width: int,
    height: int,
    client_address: str,
    client_token_id: str,
) -> tuple[Record, Path, bool]:
    """Store one submission (image, then sidecar, each atomically). Returns the record, the image
    path and whether the same image with the same label was already there (nothing is rewritten)."""
    label = check_label(label)
    ext = EXTENSIONS.get(fmt)
    if ext is None:
        raise FeedbackError(f"{fmt or 'this'} images are not accepted")
    root = Path(root)
    sha = hashlib.sha256(data).hexdigest()
    stem = submission_id(sha, label)
    image, sidecar = root / f"{stem}{ext}", root / f"{stem}.json"
    if sidecar.is_file():
        try:
            return Record.model_validate_json(sidecar.read_bytes()), image, True
        except ValidationError:
            pass  # a damaged sidecar is replaced by a good one
    record = Record(
        image=image.name,
        label=label,
        sha256=sha,
        bytes=len(data),
        format=fmt,
        width=width,
        height=height,
        received_at=datetime.now(UTC).isoformat(timespec="seconds"),
        client=Client(address=client_address[:200], token_id=client_token_id),
    )
    with atomic_path(image) as tmp:
        tmp.write_bytes(data)
    with atomic_path(sidecar) as tmp:
        tmp.write_text(record.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return record, image, False


@dataclass
class Submission:
    record: Record
    image: Path  # the image file on disk (checked to be a regular file inside the quarantine)
    sidecar: Path


def _regular(path: Path) -> os.stat_result:
    """lstat, and refuse anything but a plain file (links, FIFOs, devices) without opening it."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise FeedbackError(f"{path.name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FeedbackError(f"{path.name}: not a regular file")
    return st


def read_submission(sidecar: Path) -> Submission:
    """One sidecar and its image, every field checked; FeedbackError names what is wrong."""
    stem = sidecar.name[: -len(".json")]
    if not _STEM.fullmatch(stem):
        raise FeedbackError("sidecar name is not <sha256>-<label digest>.json")
    if _regular(sidecar).st_size > MAX_SIDECAR_BYTES:
        raise FeedbackError(f"sidecar larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        record = Record.model_validate_json(sidecar.read_bytes())
    except (ValidationError, OSError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        what = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(exc)
        raise FeedbackError(f"sidecar does not parse ({what})") from None
    label = check_label(record.label)
    if label != record.label or stem != submission_id(record.sha256, label):
        raise FeedbackError("sidecar name does not match its sha256 and label")
    if record.image not in {f"{stem}{ext}" for ext in set(EXTENSIONS.values())}:
        raise FeedbackError(f"sidecar names image {record.image!r}, expected {stem}.<image extension>")
    image = sidecar.with_name(record.image)
    if _regular(image).st_size != record.bytes:
        raise FeedbackError("image size differs from its sidecar")
    return Submission(record, image, sidecar)


def list_sidecars(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(sidecars, images without a sidecar) directly in root, sorted; subfolders are not looked into."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    names = sorted(entry.name for entry in os.scandir(root))
    sidecars = [root / n for n in names if n.endswith(".json") and not n.startswith(".")]
    stems = {p.name[: -len(".json")] for p in sidecars}
    images = [
        root / n
        for n in names
        if not n.startswith(".") and not n.endswith(".json") and n.rsplit(".", 1)[0] not in stems
    ]
    return sidecars, images
