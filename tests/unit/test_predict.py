"""Batch prediction over files, folders and globs through a real saved pyfunc model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.predict import CSV_COLUMNS, expand_inputs, load_model, predict_paths, write_predictions
from tasks.common.errors import UserError
from tests.helpers.brightness_models import save
from tests.helpers.images import png_bytes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(save(tmp_path_factory.mktemp("model") / "model"))


@pytest.fixture
def images(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "one.png").write_bytes(png_bytes(240))
    (tmp_path / "a" / "deep" / "two.PNG").write_bytes(png_bytes(20))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "skip.png").write_bytes(png_bytes(0))
    (tmp_path / "b1.png").write_bytes(png_bytes(200))
    (tmp_path / "b2.png").write_bytes(png_bytes(30))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return tmp_path


def test_expand_files_folders_and_globs(images):
    found = expand_inputs(
        [str(images / "a"), str(images / "b*.png"), str(images / "broken.png"), str(images / "b1.png")]
    )
    assert found == [
        str(images / "a" / "deep" / "two.PNG"),
        str(images / "a" / "one.png"),
        str(images / "b1.png"),
        str(images / "b2.png"),
        str(images / "broken.png"),
    ]


def test_a_name_matching_nothing_is_kept_for_its_error_row(images):
    assert expand_inputs([str(images / "nothing*.png")]) == [str(images / "nothing*.png")]
    (images / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        expand_inputs([str(images / "empty")])


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_bad_file_gets_its_error_and_the_batch_goes_on(model, images, batch_size):
    paths = [str(images / "b1.png"), str(images / "broken.png"), str(images / "missing.png"), str(images / "b2.png")]
    out = predict_paths(model, paths, batch_size=batch_size)
    assert list(out.columns) == CSV_COLUMNS
    assert out["path"].tolist() == paths
    assert out["label"].tolist() == ["bright", "", "", "dark"]
    assert out["error"].iloc[0] == "" and out["error"].iloc[3] == ""
    assert out["error"].iloc[1] != "" and out["error"].iloc[2] == "file not found"
    assert out["score"].iloc[1:3].isna().all()
    assert json.loads(out["top_k"].iloc[0])[0][0] == "bright"


def test_a_model_that_fails_the_whole_batch_still_scores_the_good_images(images, tmp_path):
    strict = load_model(save(tmp_path / "strict", strict=True))
    out = predict_paths(
        strict, [str(images / "b1.png"), str(images / "broken.png"), str(images / "b2.png")], batch_size=3
    )
    assert out["label"].tolist() == ["bright", "", "dark"]
    assert out["error"].iloc[1].startswith("OSError")


def test_csv_written(model, images, tmp_path):
    out = predict_paths(model, expand_inputs([str(images / "a")]), batch_size=8)
    target = write_predictions(out, tmp_path / "out" / "predictions.csv")
    written = pd.read_csv(target, keep_default_na=False)
    assert list(written.columns) == CSV_COLUMNS
    assert written["label"].tolist() == ["dark", "bright"]
    assert [p.name for p in target.parent.iterdir()] == ["predictions.csv"]  # no temp file left behind


def test_unloadable_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load model"):
        load_model(str(tmp_path / "no-model-here"))
