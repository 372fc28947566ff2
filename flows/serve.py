"""`imgcls serve`: a small FastAPI app around the pyfunc model.

POST /predict  (multipart `image`)                -> label, score, top_k
POST /feedback (multipart `image` + form `label`) -> stored in the ingest inbox for the next run
GET  /health                                      -> model uri/version

Uploads are bytes only: size is checked from Content-Length and while reading, pixels from the
image header before decoding, and nothing uploaded is ever unpickled."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from tasks.common.atomic import atomic_path
from tasks.common.images import DecodeError, Header, decode, probe
from flows.predict import load_model, predict_bytes

# multipart framing and the label field on top of the file itself
MULTIPART_OVERHEAD = 64 * 1024
# inbox files get an extension ingest recognises; formats PIL reads but ingest would skip are refused
INBOX_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "GIF": ".gif",
                    "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm"}


def sanitize_label(label: str) -> str:
    """A class name usable as one folder name: no separators, no leading dots, no control characters."""
    name = re.sub(r"[^\w.\- ]+", "_", label.strip()).strip(" .")
    if not re.search(r"[^\W_]", name):
        raise HTTPException(422, "label must contain at least one letter or digit")
    return name[:100]


def model_version(model_uri: str) -> str | None:
    """The registry version behind models:/name@alias or models:/name/N; None for plain paths/runs."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(\d+))", model_uri)
    if not match:
        return None
    name, alias, number = match.groups()
    if number:
        return number
    from mlflow import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except Exception:  # health must answer even when the registry is briefly unreachable
        return None


def _reason(exc: DecodeError) -> str:
    # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): noise to an API client
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", str(exc))


def _read_upload(upload: UploadFile, max_upload_bytes: int, max_pixels: int) -> tuple[bytes, Header]:
    data = upload.file.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise HTTPException(413, f"upload larger than {max_upload_bytes} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    try:
        header = probe(data)
    except DecodeError as exc:
        raise HTTPException(400, f"not an image: {_reason(exc)}") from None
    if header.pixels > max_pixels:
        raise HTTPException(413, f"{header.width}x{header.height} image exceeds the pixel limit {max_pixels}")
    try:
        decode(data, max_pixels=max_pixels)
    except DecodeError as exc:
        raise HTTPException(400, f"corrupt image: {_reason(exc)}") from None
    return data, header


def create_app(model_uri: str, inbox_dir: str | Path, max_upload_bytes: int = 10 * 1024 * 1024,
               max_pixels: int = 40_000_000) -> FastAPI:
    model = load_model(model_uri)
    inbox = Path(inbox_dir)
    version = model_version(model_uri)
    run_id = getattr(getattr(model, "metadata", None), "run_id", None)
    app = FastAPI(title="imgcls", description=f"image classifier {model_uri}")

    @app.middleware("http")
    async def reject_oversized(request: Request, call_next):
        # refuse before the multipart body is read and spooled
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > max_upload_bytes + MULTIPART_OVERHEAD:
            return JSONResponse({"detail": f"upload larger than {max_upload_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "model_uri": model_uri, "model_version": version, "run_id": run_id}

    @app.post("/predict")
    def predict(image: UploadFile = File(...)) -> dict[str, Any]:
        data, _ = _read_upload(image, max_upload_bytes, max_pixels)
        result = predict_bytes(model, data)
        if result["error"]:
            raise HTTPException(422, f"model could not score the image: {result['error']}")
        return {"label": result["label"], "score": result["score"], "top_k": result["top_k"], "model_version": version}

    @app.post("/feedback")
    def feedback(image: UploadFile = File(...), label: str = Form(...)) -> dict[str, Any]:
        data, header = _read_upload(image, max_upload_bytes, max_pixels)
        ext = INBOX_EXTENSIONS.get(header.format)
        if ext is None:
            raise HTTPException(415, f"{header.format or 'this'} images are not accepted; send PNG, JPEG, BMP, GIF, TIFF or WebP")
        name = sanitize_label(label)
        image_id = hashlib.sha256(data).hexdigest()
        target = inbox / name / f"{image_id}{ext}"
        existed = target.exists()
        if not existed:
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        return {"stored": str(target), "image_id": image_id, "label": name, "already_present": existed}

    return app
