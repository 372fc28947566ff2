"""The content-addressed image store (`paths.store`): a local folder, or any fsspec URL
(`s3://bucket/prefix`, `gs://...`, ...) that every Dask worker can reach.

Layout, the same on both: <store>/<first two hex chars of the sha256>/<sha256>, the format read from
the bytes. A local store is read and written exactly as before this module existed (a Path to the
file, atomic temp + rename, no fsspec import on the hot path). A URL store goes through fsspec:
credentials and endpoint come from the environment its library reads (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL, which s3fs/botocore honour), so a
worker needs only the URL string and image ids, never a secret in params.yaml.

Decoders (tasks.common.images) take what `source()` returns: the local Path, or the fetched bytes
named by the image id (so a decoder's message reads the same whichever store it came from)."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tasks.common.errors import UserError
from tasks.common.images import ImageBytes

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
# fsspec protocols whose single-object writes are atomic (the object appears complete or not at all)
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"}
# images a remote store fetches at once (concurrently, on s3fs/gcsfs/adlfs): hides the ~10-50 ms of
# each request's latency, and bounds the bytes a worker holds to this many files
FETCH_BATCH = 64


def scheme(location: str | Path) -> str | None:
    """'s3' for s3://bucket/prefix, None for a local path (file:// counts as local)."""
    match = _URL.match(str(location))
    if not match or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def check_location(location: str) -> str:
    """The `paths.store` check: a local path, or a URL whose scheme fsspec knows (one-line error)."""
    protocol = scheme(location)
    if protocol is None:
        return location
    from fsspec.registry import known_implementations, registry

    if protocol not in known_implementations and protocol not in registry:
        raise ValueError(
            f"unknown storage scheme {protocol}:// (fsspec knows e.g. s3://, gs://, az://, or a local path)"
        )
    return location


class ImageStore:
    """One store, local or remote. Cheap to make: a Dask task makes one per partition from the
    location string it was sent (fsspec caches the filesystem object per process)."""

    def __init__(self, location: str | Path):
        text = str(location)
        self.protocol = scheme(text)
        self.remote = self.protocol is not None
        if self.remote:
            import fsspec

            try:
                self.fs, root = fsspec.core.url_to_fs(text)
            except ImportError as exc:
                raise UserError(f"store {text}: {exc} (install the fsspec backend for {self.protocol}://)") from None
            self.root = root.rstrip("/")
            self.location = text.rstrip("/")
        else:
            self.root = text[len("file://") :] if text.startswith("file://") else text
            self.location = self.root

    # ---- where --------------------------------------------------------------------------------
    def for_workers(self) -> str:
        """What a Dask worker is sent: the URL, or the absolute path (never relative to the driver's cwd)."""
        return self.location if self.remote else str(Path(self.root).resolve())

    def _key(self, image_id: str) -> str:
        return f"{self.root}/{image_id[:2]}/{image_id}"

    def path(self, image_id: str) -> Path:
        """The file of a local store (what manifest.store_path gives)."""
        return Path(self.root) / image_id[:2] / image_id

    def location_of(self, image_id: str) -> str:
        """The image's address: a local path, or a URL (open it with `open_location`)."""
        return f"{self.location}/{image_id[:2]}/{image_id}" if self.remote else str(self.path(image_id))

    # ---- read ---------------------------------------------------------------------------------
    def source(self, image_id: str) -> Path | ImageBytes:
        """What the decoders take. Local: the Path (nothing read here). Remote: the bytes, fetched
        now; FileNotFoundError when the store lacks the image."""
        if not self.remote:
            return self.path(image_id)
        return ImageBytes(image_id, self.fs.cat_file(self._key(image_id)))

    def source_or_none(self, image_id: str) -> Path | ImageBytes | None:
        """source(), or None when the image is not in the store (one request on a remote store)."""
        if not self.remote:
            path = self.path(image_id)
            return path if path.is_file() else None
        try:
            return self.source(image_id)
        except FileNotFoundError:
            return None

    def sources(self, image_ids: Iterable[str], check: bool = True) -> Iterator[tuple[str, Path | ImageBytes | None]]:
        """(image_id, source_or_none) for each, in order: local, a stat per image (none with
        check=False: the decoder then reports a missing file); remote, the images are fetched
        FETCH_BATCH at a time in one concurrent batch of requests, None for those not in the store."""
        if not self.remote:
            for image_id in image_ids:
                yield image_id, self.source_or_none(image_id) if check else self.path(image_id)
            return
        ids = list(image_ids)
        for start in range(0, len(ids), FETCH_BATCH):
            chunk = ids[start : start + FETCH_BATCH]
            got = _fetch(self.fs, [self._key(i) for i in chunk])
            for image_id in chunk:
                data = got[self._key(image_id)]
                yield image_id, None if data is None else ImageBytes(image_id, data)

    def read_bytes(self, image_id: str) -> bytes:
        return self.path(image_id).read_bytes() if not self.remote else self.fs.cat_file(self._key(image_id))

    def exists(self, image_id: str) -> bool:
        if not self.remote:
            return self.path(image_id).is_file()
        self.fs.invalidate_cache(self._key(image_id))  # another process (a worker, ingest) may have changed it
        return self.fs.isfile(self._key(image_id))

    def sizes(self) -> dict[str, int]:
        """image_id -> size in bytes of every image in the store (one listing; temp files ignored)."""
        if not self.remote:
            root = Path(self.root)
            return (
                {p.name: p.stat().st_size for p in root.glob("*/*") if p.is_file() and _IMAGE_ID.match(p.name)}
                if root.is_dir()
                else {}
            )
        self.fs.invalidate_cache(self.root)  # s3fs keeps listings: another process may have written since
        with _one_line(self.location):
            try:
                found = self.fs.find(self.root, detail=True)  # an absent prefix is an empty store
            except FileNotFoundError as exc:  # the bucket itself is absent
                raise UserError(f"image store {self.location}: {exc}") from None
        out = {}
        for key, info in found.items():
            name = key.rstrip("/").rsplit("/", 1)[-1]
            if _IMAGE_ID.match(name) and key.rstrip("/").endswith(f"{name[:2]}/{name}"):
                out[name] = int(info.get("size") or 0)
        return out

    def ids(self) -> set[str]:
        return set(self.sizes())

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """Those of `image_ids` not in the store, in their order: a stat each when local, one
        listing when remote (not a request per image)."""
        if not self.remote:
            return [i for i in image_ids if not self.path(i).is_file()]
        present = self.ids()
        return [i for i in image_ids if i not in present]

    # ---- write --------------------------------------------------------------------------------
    def write(self, image_id: str, tmp_file: Path) -> None:
        """Put the finished, verified local `tmp_file` in place as `image_id`. Local: one rename (the
        caller made it beside the target). Remote: one upload, atomic on object stores; elsewhere
        uploaded under a temporary name and then renamed."""
        if not self.remote:
            target = self.path(image_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(tmp_file, target)
            return
        key = self._key(image_id)
        with _one_line(self.location):
            if self.protocol in _ATOMIC_PUT:
                self.fs.put_file(str(tmp_file), key)
            else:
                self.fs.put_file(str(tmp_file), key + ".part")
                self.fs.mv(key + ".part", key)

    def delete(self, image_ids: Iterable[str]) -> int:
        ids = list(image_ids)
        if not self.remote:
            for image_id in ids:
                self.path(image_id).unlink(missing_ok=True)
        elif ids:
            with _one_line(self.location):
                self.fs.rm([self._key(i) for i in ids])
        return len(ids)


def open_location(location: str | Path) -> Path | ImageBytes:
    """What the decoders take for an image's address (ImageStore.location_of): a local path as a Path
    (nothing read), a URL fetched into bytes named by its file name."""
    if scheme(location) is None:
        text = str(location)
        return Path(text[len("file://") :] if text.startswith("file://") else text)
    import fsspec

    with fsspec.open(str(location), "rb") as fh:
        return ImageBytes(str(location).rstrip("/").rsplit("/", 1)[-1], fh.read())


def open_locations(locations: Sequence[str]) -> Iterator[Path | ImageBytes | OSError]:
    """open_location of each address, in order, with a remote store's images fetched FETCH_BATCH at
    a time concurrently; an address that cannot be read yields its error instead (FileNotFoundError)."""
    for start in range(0, len(locations), FETCH_BATCH):
        chunk = [str(loc) for loc in locations[start : start + FETCH_BATCH]]
        urls = [loc for loc in chunk if scheme(loc) is not None]
        fetched: dict[str, bytes | None] = {}
        if urls:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(urls[0])
            same = [u for u in urls if scheme(u) == scheme(urls[0])]  # one filesystem per batch
            keys = {u: fs._strip_protocol(u) for u in same}
            got = _fetch(fs, list(keys.values()))
            fetched = {u: got[k] for u, k in keys.items()}
        for loc in chunk:
            if scheme(loc) is None:
                yield open_location(loc)
            elif loc in fetched:
                data = fetched[loc]
                yield FileNotFoundError(loc) if data is None else ImageBytes(loc.rstrip("/").rsplit("/", 1)[-1], data)
            else:
                try:
                    yield open_location(loc)
                except OSError as exc:
                    yield exc


def _fetch(fs, keys: list[str]) -> dict[str, bytes | None]:
    """key -> bytes, None for a key the store does not hold; other errors are raised."""
    with _one_line(keys[0] if keys else ""):
        got = fs.cat(keys, on_error="return") if keys else {}
    if len(keys) == 1 and not isinstance(got, dict):  # fsspec returns bare bytes for a single path
        got = {keys[0]: got}
    out: dict[str, bytes | None] = {}
    for key in keys:
        value = got.get(key)
        if isinstance(value, FileNotFoundError):
            out[key] = None
        elif isinstance(value, BaseException):
            with _one_line(key):
                raise value
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def _one_line(where: str) -> Iterator[None]:
    """A remote store's failures (no credentials, access denied, no such bucket, endpoint down) as one
    UserError line naming the store, on the driver and (re-raised there by Dask) from a worker."""
    try:
        yield
    except (FileNotFoundError, UserError):
        raise
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"image store {where}: {type(exc).__name__}: {text}"[:300]) from None
