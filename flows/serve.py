"""`imgcls serve`: a small FastAPI app around the pyfunc model.

POST /predict  (multipart `image`)                -> label, score, top_k               (open)
POST /feedback (multipart `image` + form `label`) -> quarantined for ingest's policy    (bearer token)
GET  /health                                      -> model uri/version                  (open)
GET  /metrics                                     -> Prometheus text format             (open)

In front of the routes (flows/guards.py): a token bucket per client address (429), a bearer token on
every write endpoint (401; 403 when the server has no token), and a body limit counted while the body
streams in (413 as soon as it is crossed, chunked uploads too). Uploads are bytes only: pixels are
checked from the image header before decoding, and nothing uploaded is ever unpickled.

Feedback never goes straight into training data: it lands in the quarantine (paths.feedback, format
in tasks/common/feedback_inbox.py) with who sent it and when, and its label must be a class of the
served model unless the server was started with --allow-new-labels. Ingest admits it, or sends it to
review when it contradicts the data.

With `input_log` set, every scored /predict input is also recorded for the drift watch
(flows/drift.py: one JSON line of image statistics + the served label and score) after the response
has gone out, from the image already decoded for the size checks; `imgcls drift` reads that log."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response
from PIL import Image

from flows.drift import InputRecorder
from flows.guards import BodyLimit, RateLimit, WriteAuth
from flows.metrics import Metrics, MetricsMiddleware
from flows.predict import load_model, predict_bytes
from tasks.common.feedback_inbox import EXTENSIONS, FeedbackError, check_label, write_submission
from tasks.common.images import DecodeError, Header, decode, probe

# multipart framing and the label field on top of the file itself
MULTIPART_OVERHEAD = 64 * 1024
OPEN_WRITE_PATHS = ("/predict",)  # POST, but writes nothing: no token needed


def sanitize_label(label: str) -> str:
    """A new class name (only with allow_new_labels) usable as one folder name: no separators, no
    leading dots, no control characters."""
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


def served_classes(model: Any) -> list[str] | None:
    """The class names of an imgcls pyfunc model (its predictor's classes); None when the model does
    not say (another pyfunc)."""
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # not a python_function model built from a PythonModel
        return None
    classes = getattr(getattr(python_model, "predictor", None), "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def _reason(exc: DecodeError) -> str:
    # PIL names the in-memory buffer ("<_io.BytesIO object at 0x...>"): noise to an API client
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-f]+>", "", str(exc))


def _read_upload(upload: UploadFile, max_upload_bytes: int, max_pixels: int) -> tuple[bytes, Header, Image.Image]:
    """The upload's bytes, header and decoded image (L or RGB; decoded once, to refuse corrupt files)."""
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
        image = decode(data, max_pixels=max_pixels)
    except DecodeError as exc:
        raise HTTPException(400, f"corrupt image: {_reason(exc)}") from None
    return data, header, image


def create_app(
    model_uri: str,
    feedback_dir: str | Path,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    tokens: Iterable[str] = (),
    rate_limit: float = 20.0,
    rate_burst: int = 40,
    allow_new_labels: bool = False,
    classes: Iterable[str] | None = None,
    input_log: str | Path | None = None,
) -> FastAPI:
    """tokens: bearer tokens allowed to write (none: write endpoints answer 403); rate_limit: requests
    per second per client address (0: off) with bursts of rate_burst; classes: the labels feedback
    may carry (default: the served model's classes; any label with allow_new_labels); input_log: the
    folder the drift watch's input log goes to (flows.drift.default_log_dir; None: not recorded)."""
    model = load_model(model_uri)
    quarantine = Path(feedback_dir)
    version = model_version(model_uri)
    run_id = getattr(getattr(model, "metadata", None), "run_id", None)
    known = list(classes) if classes is not None else served_classes(model)
    known_set = set(known or ())
    tokens = list(tokens)
    metrics = Metrics(model_uri, version, run_id)
    recorder = InputRecorder(input_log) if input_log is not None else None
    app = FastAPI(title="imgcls", description=f"image classifier {model_uri}")

    def accept_label(label: str) -> str:
        try:
            text = check_label(label)
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from None
        if text in known_set:
            return text
        if allow_new_labels:
            return sanitize_label(text)
        if known is None:
            raise HTTPException(
                403,
                "the served model does not list its classes: feedback labels cannot be checked "
                "(start the server with --allow-new-labels to accept any label)",
            )
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise HTTPException(422, f"label {text!r} is not a class of the served model ({shown})")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "ok": True,
            "model_uri": model_uri,
            "model_version": version,
            "run_id": run_id,
            "feedback_enabled": bool(tokens),
            "input_log": recorder is not None,
        }

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/predict")
    def predict(background: BackgroundTasks, image: UploadFile = File(...)) -> dict[str, Any]:
        data, _, decoded = _read_upload(image, max_upload_bytes, max_pixels)
        result = predict_bytes(model, data)
        if result["error"]:
            raise HTTPException(422, f"model could not score the image: {result['error']}")
        if recorder is not None:  # after the response is sent; record() never raises
            background.add_task(
                recorder.record, decoded, label=result["label"], score=result["score"], model_version=version
            )
        return {"label": result["label"], "score": result["score"], "top_k": result["top_k"], "model_version": version}

    @app.post("/feedback")
    def feedback(request: Request, image: UploadFile = File(...), label: str = Form(...)) -> dict[str, Any]:
        name = accept_label(label)
        data, header, _ = _read_upload(image, max_upload_bytes, max_pixels)
        if header.format not in EXTENSIONS:
            raise HTTPException(
                415, f"{header.format or 'this'} images are not accepted; send PNG, JPEG, BMP, GIF, TIFF or WebP"
            )
        client = request.client.host if request.client else "unknown"
        try:
            record, stored, existed = write_submission(
                quarantine,
                data,
                name,
                header.format,
                header.width,
                header.height,
                client,
                getattr(request.state, "token_id", ""),
            )
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from None
        metrics.feedback.labels("already_present" if existed else "stored").inc()
        # the submission id, not a server path: clients learn nothing about the file system
        return {
            "submission": stored.stem,
            "image_id": record.sha256,
            "label": record.label,
            "already_present": existed,
            "quarantined": True,
        }

    # outermost last: metrics see every answer; the rate limit and the token are checked before any
    # body byte is read; the body limit wraps the routes' reading of it
    app.add_middleware(
        BodyLimit,
        max_body=max_upload_bytes + MULTIPART_OVERHEAD,
        message=f"upload larger than {max_upload_bytes} bytes",
    )
    app.add_middleware(WriteAuth, tokens=tokens, open_paths=OPEN_WRITE_PATHS)
    app.add_middleware(RateLimit, rate=rate_limit, burst=rate_burst)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints={route.path for route in app.routes})
    return app
