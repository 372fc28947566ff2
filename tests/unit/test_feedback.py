"""Feedback you can trust, end to end: a real imgcls pyfunc model served by the FastAPI app, writers
authenticated, clients rate-limited, labels checked against the model's classes, uploads quarantined,
and ingest admitting only what its policy allows (a feedback label never overrides the data)."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flows.guards import TOKEN_ENV, TokenBuckets, load_tokens
from flows.predict import load_model
from flows.serve import create_app, served_classes
from models.networks import build_network
from models.predictor import save_model_files
from models.pyfunc import save_pyfunc
from tasks import clean, ingest
from tasks.common.errors import UserError
from tasks.common.feedback_inbox import write_submission
from tasks.common.params import Paths
from tests.helpers.images import pattern, write_png

TOKEN = "feedback-token-0123456789"
OTHER = "another-token-abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny real imgcls model (untrained resnet_tiny) saved as training saves it: it names its classes."""
    import torch

    root = tmp_path_factory.mktemp("feedback_model")
    torch.manual_seed(0)
    stats = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.25]}
    files = save_model_files(root / "files", "resnet_tiny", build_network("resnet_tiny", 2, 1), CLASSES, stats)
    save_pyfunc(root / "model", files, np.zeros((16, 16, 1), dtype=np.uint8))
    return str(root / "model")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def upload(data: bytes):
    return {"image": ("x.png", data, "application/octet-stream")}


def app_for(model_dir, feedback_dir, **kw):
    return create_app(model_dir, feedback_dir, max_upload_bytes=50_000, max_pixels=512 * 512, **kw)


# --- the server ----------------------------------------------------------------------------------


def test_served_classes_come_from_the_model(model_dir):
    assert served_classes(load_model(model_dir)) == CLASSES


def test_without_a_token_configured_writes_are_refused_reads_stay_open(model_dir, tmp_path):
    with TestClient(app_for(model_dir, tmp_path / "fb")) as client:
        response = client.post("/feedback", files=upload(png(pattern(1))), data={"label": "cat"}, headers=AUTH)
        assert response.status_code == 403 and "no feedback token is configured" in response.json()["detail"]
        assert client.post("/predict", files=upload(png(pattern(1)))).json()["label"] in CLASSES
        assert client.get("/health").json()["feedback_enabled"] is False
    assert not (tmp_path / "fb").exists()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
def test_unauthenticated_or_wrong_token_is_refused(model_dir, tmp_path, headers):
    with TestClient(app_for(model_dir, tmp_path / "fb", tokens=[TOKEN, OTHER])) as client:
        response = client.post("/feedback", files=upload(png(pattern(1))), data={"label": "cat"}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        # any other write endpoint is guarded too (it would be a 404/405 only after authenticating)
        assert client.put("/predict/anything", content=b"x").status_code == 401
        ok = client.post(
            "/feedback",
            files=upload(png(pattern(1))),
            data={"label": "cat"},
            headers={"Authorization": f"Bearer {OTHER}"},
        )
        assert ok.status_code == 200, ok.text
    assert len(list((tmp_path / "fb").glob("*.json"))) == 1


def test_tokens_from_the_environment_or_a_private_file(tmp_path):
    assert load_tokens(None, {TOKEN_ENV: f" {TOKEN} ,{OTHER}"}) == [TOKEN, OTHER]
    assert load_tokens(None, {}) == []
    with pytest.raises(UserError, match="at least 16 characters"):
        load_tokens(None, {TOKEN_ENV: "short"})
    file = tmp_path / "tokens"
    file.write_text(f"# writers\n{TOKEN}\n\n{OTHER}\n")
    os.chmod(file, stat.S_IRUSR | stat.S_IWUSR)
    assert load_tokens(file, {TOKEN_ENV: "ignored-when-a-file-is-given"}) == [TOKEN, OTHER]
    os.chmod(file, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        load_tokens(file)
    with pytest.raises(UserError, match="--token-file"):
        load_tokens(tmp_path / "missing")


def test_rate_limit_per_client_answers_429(model_dir, tmp_path):
    app = app_for(model_dir, tmp_path / "fb", tokens=[TOKEN], rate_limit=0.5, rate_burst=2)
    image = upload(png(pattern(1)))
    with TestClient(app, client=("10.0.0.1", 1000)) as first, TestClient(app, client=("10.0.0.2", 1000)) as second:
        assert [first.post("/predict", files=image).status_code for _ in range(2)] == [200, 200]
        refused = first.post("/predict", files=image)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert first.post("/feedback", files=image, data={"label": "cat"}, headers=AUTH).status_code == 429
        assert first.get("/health").status_code == 200  # health and metrics are not limited
        assert second.post("/predict", files=image).status_code == 200  # another client has its own bucket
        text = first.get("/metrics").text
        for endpoint in ("/predict", "/feedback"):
            assert f'imgcls_requests_total{{endpoint="{endpoint}",method="POST",status="429"}} 1.0' in text


def test_token_bucket_refills_at_the_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    for key in "bcdef":  # many clients: idle (full) buckets are forgotten, memory stays bounded
        now[0] += 10
        buckets.take(key)
    assert len(buckets.buckets) <= 2


def test_unknown_label_is_refused_unless_allowed(model_dir, tmp_path):
    with TestClient(app_for(model_dir, tmp_path / "fb", tokens=[TOKEN])) as client:
        response = client.post("/feedback", files=upload(png(pattern(1))), data={"label": "bird"}, headers=AUTH)
        assert response.status_code == 422 and "not a class of the served model (cat, dog)" in response.json()["detail"]
    assert not (tmp_path / "fb").exists()
    with TestClient(app_for(model_dir, tmp_path / "fb", tokens=[TOKEN], allow_new_labels=True)) as client:
        response = client.post("/feedback", files=upload(png(pattern(1))), data={"label": "../bird/"}, headers=AUTH)
        assert response.status_code == 200 and response.json()["label"] == "_bird_"


# --- ingest's policy -----------------------------------------------------------------------------


@pytest.fixture
def data(project, model_dir):
    """A source folder (cat/dog, three images each) and a server writing into the project's quarantine."""
    src = project.root / "src"
    for i in range(6):
        write_png(src / CLASSES[i % 2] / f"{i}.png", pattern(i))
    app = app_for(model_dir, project.root / Paths().feedback, tokens=[TOKEN])
    with TestClient(app) as client:
        yield src, client


def _ingest(src, **policy):
    return ingest.run(ingest.Params(source=str(src), feedback=ingest.FeedbackPolicy(**policy)), Paths())


def _post(client, data: bytes, label: str):
    response = client.post("/feedback", files=upload(data), data={"label": label}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_new_feedback_is_admitted_with_its_origin(data):
    src, client = data
    new = png(pattern(100))
    _post(client, new, "dog")
    summary = _ingest(src)
    manifest = pd.read_parquet("data/manifests/ingested.parquet").set_index("image_id")
    row = manifest.loc[hashlib.sha256(new).hexdigest()]
    assert row["label"] == "dog" and row["origin"] == "feedback" and row["source_path"].startswith("data/feedback/")
    assert summary["from_feedback"] == 1 and summary["feedback_review"] == 0
    assert pd.read_csv("reports/ingest/feedback_review.csv").empty


def test_conflicting_feedback_goes_to_review_not_to_the_store(data):
    src, client = data
    existing = (src / "cat" / "0.png").read_bytes()
    _post(client, existing, "dog")
    summary = _ingest(src)
    image_id = hashlib.sha256(existing).hexdigest()
    manifest = pd.read_parquet("data/manifests/ingested.parquet")
    assert manifest.loc[manifest["image_id"] == image_id, ["source_path", "label"]].values.tolist() == [
        ["cat/0.png", "cat"]
    ]
    assert (manifest["origin"] != "feedback").all() and summary["feedback_review"] == 1
    review = pd.read_csv("reports/ingest/feedback_review.csv")
    assert review[["image_id", "label", "conflicting_labels", "existing_source", "client_address"]].values.tolist() == [
        [image_id, "dog", "cat", "cat/0.png", "testclient"]
    ]
    assert review["token_id"].iloc[0] == hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    # the same image re-posted with its own label is a duplicate, not a second copy
    _post(client, existing, "cat")
    _ingest(src)
    skipped = pd.read_csv("reports/ingest/skipped.csv")
    assert skipped.loc[skipped["reason"] == "duplicate", "detail"].str.contains("cat/0.png").all()
    assert len(pd.read_parquet("data/manifests/ingested.parquet")) == 6
    # on_conflict: drop reports it in skipped.csv instead
    _ingest(src, on_conflict="drop")
    assert "label_conflict" in set(pd.read_csv("reports/ingest/skipped.csv")["reason"])
    assert pd.read_csv("reports/ingest/feedback_review.csv").empty


def test_posting_a_training_image_with_another_label_does_not_set_the_original_aside(data):
    """The earlier attack: one POST made clean flag the original as label_conflict and drop it."""
    src, client = data
    original = (src / "dog" / "1.png").read_bytes()
    _post(client, original, "cat")
    _ingest(src)
    clean.run(clean.Params(workers=1), Paths())
    cleaned = pd.read_parquet("data/manifests/cleaned.parquet")
    assert "dog/1.png" in set(cleaned["source_path"]) and len(cleaned) == 6
    flagged = pd.read_csv("reports/clean/flagged.csv")
    assert "label_conflict" not in set(flagged["reason"])


def _encoded(path, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, save", [("JPEG", {"quality": 50}), ("BMP", {})])  # near copy / same pixels
def test_a_reencoded_copy_posted_with_another_label_flags_only_the_feedback(data, fmt, save):
    """A re-encoded copy is a new file to ingest (another sha256), so it is admitted; clean then sees a
    label conflict between it and the training image, and only the feedback copy may pay for it."""
    src, client = data
    copy = _encoded(src / "dog" / "1.png", fmt, **save)
    other = _post(client, copy, "cat")
    same = _post(client, _encoded(src / "cat" / "0.png", fmt, **save), "cat")  # agrees: a mere duplicate
    assert _ingest(src)["from_feedback"] == 2
    clean.run(clean.Params(workers=1), Paths())
    flagged = pd.read_csv("reports/clean/flagged.csv", keep_default_na=False).set_index("image_id")
    assert len(flagged) == 2
    conflict = flagged.loc[other["image_id"]]
    assert conflict["reason"] == "label_conflict" and conflict["label"] == "cat"
    assert conflict["source_path"].startswith("data/feedback/") and "dog/1.png" in conflict["detail"]
    duplicate = flagged.loc[same["image_id"]]
    expected = "duplicate" if fmt == "BMP" else "near_duplicate"
    # the copy in the data is the one kept, although data/feedback/... sorts before cat/...
    assert (
        duplicate["reason"] == expected
        and duplicate["kept_image_id"] == hashlib.sha256((src / "cat" / "0.png").read_bytes()).hexdigest()
    )
    cleaned = pd.read_parquet("data/manifests/cleaned.parquet")
    assert sorted(cleaned["source_path"]) == sorted(f"{c}/{i}.png" for i, c in enumerate(CLASSES * 3))
    assert (cleaned["origin"] != "feedback").all()


def test_training_images_that_disagree_with_each_other_are_still_both_set_aside(data):
    src, _ = data
    (src / "cat" / "copy.jpg").write_bytes(_encoded(src / "dog" / "1.png", "JPEG", quality=50))
    _ingest(src)
    clean.run(clean.Params(workers=1), Paths())
    flagged = pd.read_csv("reports/clean/flagged.csv")
    assert sorted(flagged.loc[flagged["reason"] == "label_conflict", "source_path"]) == ["cat/copy.jpg", "dog/1.png"]


def test_feedback_disagreeing_with_itself_goes_to_review(data, project):
    src, client = data
    new = png(pattern(200))
    _post(client, new, "cat")
    _post(client, new, "dog")
    assert _ingest(src)["feedback_review"] == 2
    assert sorted(pd.read_csv("reports/ingest/feedback_review.csv")["label"]) == ["cat", "dog"]


def test_unknown_class_refused_unless_the_policy_allows_new_classes(data, project):
    src, _ = data
    new = png(pattern(300))
    write_submission(project.root / "data" / "feedback", new, "bird", "PNG", 32, 32, "10.0.0.9", "abc")
    _ingest(src)
    skipped = pd.read_csv("reports/ingest/skipped.csv")
    assert skipped["reason"].tolist() == ["unknown_label"]
    assert _ingest(src, allow_new_classes=True)["from_feedback"] == 1
    assert _ingest(src, admit=False)["feedback_pending"] == 1
    assert "bird" not in set(pd.read_parquet("data/manifests/ingested.parquet")["label"])


def test_tampered_quarantine_is_reported_never_trusted(data, project):
    src, client = data
    quarantine = project.root / "data" / "feedback"
    body = _post(client, png(pattern(400)), "dog")
    stored = quarantine / f"{body['submission']}.png"
    tampered = bytearray(stored.read_bytes())
    tampered[-20] ^= 1
    stored.write_bytes(bytes(tampered))  # bytes changed after the fact (same name and size)
    write_submission(quarantine, png(pattern(402)), "cat", "PNG", 32, 32, "x", "y")
    fifo_side = next(p for p in quarantine.glob("*.json") if p.stem != stored.stem)
    image = fifo_side.with_suffix(".png")
    image.unlink()
    os.mkfifo(image)  # a FIFO where the image was: must be reported, not opened
    (quarantine / "stray.png").write_bytes(b"x")
    (quarantine / "not-a-sidecar.json").write_text("{}")
    summary = _ingest(src)
    assert summary["from_feedback"] == 0
    skipped = pd.read_csv("reports/ingest/skipped.csv").set_index("source_path")["reason"].to_dict()
    assert skipped == {
        f"data/feedback/{stored.name}": "bad_feedback",
        f"data/feedback/{fifo_side.name}": "bad_feedback",
        "data/feedback/stray.png": "bad_feedback",
        "data/feedback/not-a-sidecar.json": "bad_feedback",
    }
