"""The prediction server against a real saved pyfunc model."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from flows.drift import check_drift, default_log_dir, read_log
from flows.serve import create_app
from tests.helpers.brightness_models import save
from tests.helpers.images import png_bytes
from tests.helpers.prepared_store import make_project


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("model") / "model")


TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(model_dir, tmp_path):
    app = create_app(
        model_dir,
        tmp_path / "feedback",
        max_upload_bytes=20_000,
        max_pixels=256 * 256,
        tokens=[TOKEN],
        classes=["dark", "bright"],
    )
    with TestClient(app) as c:
        yield c


def upload(data: bytes, name: str = "x.png"):
    return {"image": (name, data, "application/octet-stream")}


def test_health_names_the_model(client, model_dir):
    body = client.get("/health").json()
    assert body["ok"] is True and body["model_uri"] == model_dir


def test_predict_good_upload(client):
    body = client.post("/predict", files=upload(png_bytes(250))).json()
    assert body["label"] == "bright"
    assert body["score"] == pytest.approx(250 / 255)
    assert [label for label, _ in body["top_k"]] == ["bright", "dark"]
    assert client.post("/predict", files=upload(png_bytes(10))).json()["label"] == "dark"


def test_not_an_image_is_400(client):
    response = client.post("/predict", files=upload(b"this is not an image at all"))
    assert response.status_code == 400
    assert response.json()["detail"] == "not an image: UnidentifiedImageError: cannot identify image file"


def test_truncated_image_is_400(client):
    good = io.BytesIO()
    Image.effect_noise((64, 64), 40).save(good, format="PNG")
    response = client.post("/predict", files=upload(good.getvalue()[:-200]))
    assert response.status_code == 400 and "corrupt" in response.json()["detail"]


def test_missing_file_field_is_422(client):
    assert client.post("/predict", data={"label": "x"}).status_code == 422


@pytest.mark.parametrize("size", [30_000, 100_000])  # caught while reading / from Content-Length
def test_oversized_upload_is_413(client, size):
    response = client.post("/predict", files=upload(b"\x89PNG" + b"0" * size))
    assert response.status_code == 413 and "larger than 20000 bytes" in response.json()["detail"]


def test_too_many_pixels_is_413_from_the_header(client):
    # tiny file, huge canvas: refused from the header, never decoded
    response = client.post("/predict", files=upload(png_bytes(0, size=1000)))
    assert response.status_code == 413 and "pixel limit" in response.json()["detail"]


def test_feedback_is_quarantined_with_a_sidecar(client, tmp_path):
    data = png_bytes(200)
    response = client.post("/feedback", files=upload(data), data={"label": " bright "}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    sha = hashlib.sha256(data).hexdigest()
    assert body["label"] == "bright" and body["image_id"] == sha and body["already_present"] is False
    assert body["quarantined"] is True
    stored = sorted(p.name for p in (tmp_path / "feedback").iterdir())
    stem = body["submission"]
    assert stored == [f"{stem}.json", f"{stem}.png"] and stem.startswith(sha)
    assert (tmp_path / "feedback" / f"{stem}.png").read_bytes() == data
    sidecar = json.loads((tmp_path / "feedback" / f"{stem}.json").read_text())
    assert sidecar["label"] == "bright" and sidecar["sha256"] == sha and sidecar["bytes"] == len(data)
    assert sidecar["format"] == "PNG" and sidecar["width"] == 16 and sidecar["received_at"]
    assert sidecar["client"] == {"address": "testclient", "token_id": hashlib.sha256(TOKEN.encode()).hexdigest()[:12]}
    assert TOKEN not in (tmp_path / "feedback" / f"{stem}.json").read_text()
    again = client.post("/feedback", files=upload(data), data={"label": "bright"}, headers=AUTH).json()
    assert again["already_present"] is True and len(list((tmp_path / "feedback").iterdir())) == 2
    # nothing goes to the ingest inbox any more
    assert not (tmp_path / "inbox").exists()


def test_feedback_refuses_bad_label_and_bad_image(client, tmp_path):
    assert client.post("/feedback", files=upload(png_bytes(1)), data={"label": " ./ "}, headers=AUTH).status_code == 422
    assert client.post("/feedback", files=upload(png_bytes(1)), data={"label": "  "}, headers=AUTH).status_code == 422
    assert client.post("/feedback", files=upload(b"garbage"), data={"label": "dark"}, headers=AUTH).status_code == 400
    assert not (tmp_path / "feedback").exists()


def test_metrics_count_requests_by_endpoint_and_status(client, model_dir):
    client.get("/health")
    client.post("/predict", files=upload(png_bytes(250)))
    client.post("/predict", files=upload(b"not an image"))
    client.post("/feedback", files=upload(png_bytes(250)), data={"label": "bright"})  # no token: 401
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'imgcls_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'imgcls_requests_total{endpoint="/predict",method="POST",status="400"} 1.0' in text
    assert 'imgcls_requests_total{endpoint="/feedback",method="POST",status="401"} 1.0' in text
    assert 'imgcls_requests_total{endpoint="other",method="GET",status="404"} 1.0' in text
    assert 'imgcls_request_duration_seconds_count{endpoint="/predict"} 2.0' in text
    assert "imgcls_request_errors_total" in text
    assert f'imgcls_model_info{{model_uri="{model_dir}",model_version="",run_id=""}} 1.0' in text
    assert "imgcls_model_version -1.0" in text


def test_scored_inputs_are_recorded_after_the_response_and_drift_reads_them(model_dir, tmp_path):
    paths = make_project(tmp_path / "project")
    log_dir = default_log_dir(paths)
    app = create_app(
        model_dir,
        tmp_path / "feedback",
        max_upload_bytes=20_000,
        max_pixels=256 * 256,
        tokens=[TOKEN],
        classes=["dark", "bright"],
        input_log=log_dir,
    )
    values = [30 + 13 * i for i in range(14)]
    with TestClient(app) as c:
        assert c.get("/health").json()["input_log"] is True
        for value in values:
            assert c.post("/predict", files=upload(png_bytes(value, mode="RGB"))).status_code == 200
        assert c.post("/predict", files=upload(b"not an image")).status_code == 400  # not scored: not recorded
        c.post("/feedback", files=upload(png_bytes(200)), data={"label": "bright"}, headers=AUTH)  # not /predict
    records, skipped = read_log(log_dir, 1000)
    assert len(records) == len(values) and skipped == 0
    assert [r["brightness"] for r in records] == pytest.approx([v / 255 for v in values], abs=1e-4)
    assert [r["label"] for r in records] == ["dark" if v < 128 else "bright" for v in values]
    assert (
        records[0]["channels"] == 3
        and records[0]["width"] == 16
        and records[0]["score"] == pytest.approx(1 - 30 / 255, abs=1e-5)
    )
    report = check_drift(paths, window=100, min_samples=10, publish=False)
    assert report["served"] == len(values) and report["status"] in ("ok", "drift") and report["psi"]
    dark = sum(v < 128 for v in values) / len(values)
    assert report["served_label_shares"] == {"bright": round(1 - dark, 4), "dark": round(dark, 4)}


def test_without_an_input_log_nothing_is_recorded(client, tmp_path):
    assert client.get("/health").json()["input_log"] is False
    assert client.post("/predict", files=upload(png_bytes(250))).status_code == 200
    assert not any(p.name.endswith(".jsonl") for p in tmp_path.rglob("*"))


@contextlib.contextmanager
def running(app):
    """The app behind a real uvicorn on a free port of 127.0.0.1, in a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def multipart_stream(counter: dict, total: int, fields: dict[str, str] | None = None, chunk: int = 64 * 1024):
    """A multipart body sent chunked (no Content-Length): form fields, then an endless-looking file."""
    boundary = "imgclsboundary"
    for name, value in (fields or {}).items():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    while counter["sent"] < total:
        counter["sent"] += chunk
        yield b"\x89PNG" + b"0" * (chunk - 4)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_chunked_oversized_upload_is_cut_off_with_413(model_dir, tmp_path, path):
    app = create_app(model_dir, tmp_path / "feedback", max_upload_bytes=20_000, tokens=[TOKEN], classes=["dark"])
    total = 256 * 1024 * 1024
    counter = {"sent": 0}
    with running(app) as url, httpx.Client(timeout=30) as http:
        response = http.post(
            url + path,
            content=multipart_stream(counter, total, {"label": "dark"}),
            headers={**AUTH, "Content-Type": "multipart/form-data; boundary=imgclsboundary"},
        )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413 and "larger than 20000 bytes" in response.json()["detail"]
    # the server stopped reading near the limit: the client could not push more than socket buffers hold
    assert counter["sent"] < 32 * 1024 * 1024
    assert not (tmp_path / "feedback").exists()


def test_refused_writer_is_cut_off_before_the_body(model_dir, tmp_path):
    app = create_app(model_dir, tmp_path / "feedback", max_upload_bytes=20_000, tokens=[TOKEN], classes=["dark"])
    counter = {"sent": 0}
    with running(app) as url, httpx.Client(timeout=30) as http:
        response = http.post(
            url + "/feedback",
            content=multipart_stream(counter, 256 * 1024 * 1024, {"label": "dark"}),
            headers={"Content-Type": "multipart/form-data; boundary=imgclsboundary"},
        )
    assert response.status_code == 401 and counter["sent"] < 32 * 1024 * 1024


def test_rate_limited_clients_get_429_and_no_connection_errors(model_dir, tmp_path):
    """Past the burst, one client gets 429s (with the unread body drained first, flows/guards.drain), and
    every refused request still reaches the client as an answer."""
    app = create_app(model_dir, tmp_path / "feedback", rate_limit=1.0, rate_burst=2)
    statuses, errors = [], 0
    with running(app) as url:
        for _ in range(30):
            with httpx.Client(timeout=30) as http:  # a new connection each time, as load tools do
                try:
                    body = {"image": ("x.png", os.urandom(150_000))}  # over a socket read, under the drain limit
                    statuses.append(http.post(url + "/predict", files=body).status_code)
                except httpx.TransportError:
                    errors += 1
    assert errors == 0, f"{errors} connections reset"
    assert statuses.count(429) >= 20 and set(statuses) <= {400, 429}  # 400: not an image, once admitted
