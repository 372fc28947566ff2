"""The prediction server against a real saved pyfunc model."""
from __future__ import annotations

import hashlib
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.unit.brightness_model import png_bytes, save
from flows.serve import create_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture
def client(model_dir, tmp_path):
    app = create_app(model_dir, tmp_path / "inbox", max_upload_bytes=20_000, max_pixels=256 * 256)
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


def test_feedback_lands_in_the_inbox(client, tmp_path):
    data = png_bytes(200)
    response = client.post("/feedback", files=upload(data), data={"label": "../Bright cat/"})
    assert response.status_code == 200, response.text
    body = response.json()
    target = tmp_path / "inbox" / "_Bright cat_" / f"{hashlib.sha256(data).hexdigest()}.png"
    assert body["label"] == "_Bright cat_" and body["already_present"] is False
    assert target.read_bytes() == data
    assert [p.name for p in (tmp_path / "inbox").rglob("*") if p.is_file()] == [target.name]
    assert client.post("/feedback", files=upload(data), data={"label": "../Bright cat/"}).json()["already_present"] is True


def test_feedback_refuses_bad_label_and_bad_image(client, tmp_path):
    assert client.post("/feedback", files=upload(png_bytes(1)), data={"label": " ./ "}).status_code == 422
    assert client.post("/feedback", files=upload(b"garbage"), data={"label": "cat"}).status_code == 400
    assert not (tmp_path / "inbox").exists()
