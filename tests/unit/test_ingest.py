import os

import pandas as pd
import pytest

from tasks.common.errors import UserError
from tasks.common.images import sha256_file
from tasks.common.manifest import INGESTED_COLUMNS, store_path
from tasks.common.params import Paths
from tasks.ingest import Params, run
from tests.helpers.images import pattern, write_png


def _run(source, **kw):
    return run(Params(source=str(source), **kw), Paths())


def _folder(root, layout):
    for rel, seed in layout.items():
        write_png(root / rel, pattern(seed))
    return root


def test_folder_layout_nested_hidden_and_non_images(project):
    src = _folder(
        project.root / "src",
        {
            "cat/a.png": 1,
            "cat/deep/er/b.PNG": 2,
            "dog/c.png": 3,
            "dog/.hidden.png": 4,
            ".trash/cat.png": 5,
            "loose.png": 6,
        },
    )
    (src / "dog" / "notes.txt").write_text("hello")
    summary = _run(src)
    manifest = pd.read_parquet("data/manifests/ingested.parquet")
    assert list(manifest.columns) == INGESTED_COLUMNS
    assert dict(zip(manifest["source_path"], manifest["label"])) == {
        "cat/a.png": "cat",
        "cat/deep/er/b.PNG": "cat",
        "dog/c.png": "dog",
    }
    skipped = pd.read_csv("reports/ingest/skipped.csv")
    assert dict(zip(skipped["source_path"], skipped["reason"])) == {
        "dog/.hidden.png": "hidden",
        ".trash/cat.png": "hidden",
        "loose.png": "no_label",
        "dog/notes.txt": "not_image",
    }
    assert summary["images"] == 3 and summary["skipped"] == 4
    # content-addressed store, user's files untouched
    for row in manifest.itertuples():
        assert sha256_file(store_path("data/store", row.image_id)) == row.image_id
        assert row.width == 32 and row.height == 32 and row.format == "PNG" and row.mode == "L"
    assert (src / "cat" / "a.png").is_file()


def test_garbage_file_is_ingested_for_clean_to_flag(project):
    src = _folder(project.root / "src", {"cat/a.png": 1})
    (src / "cat" / "broken.png").write_bytes(b"not an image at all")
    _run(src)
    manifest = pd.read_parquet("data/manifests/ingested.parquet").set_index("source_path")
    assert manifest.loc["cat/broken.png", "format"] == "" and manifest.loc["cat/broken.png", "width"] == 0


def test_csv_manifest_relative_paths_escape_and_split(project):
    data = project.root / "data_root"
    write_png(data / "imgs" / "x.png", pattern(1))
    write_png(data / "imgs" / "y.png", pattern(2))
    write_png(project.root / "outside.png", pattern(3))
    pd.DataFrame(
        {
            "path": ["imgs/x.png", "imgs/y.png", "../outside.png", "imgs/missing.png"],
            "label": ["a", "b", "a", "b"],
            "split": ["train", "test", "", ""],
        }
    ).to_csv(data / "m.csv", index=False)
    _run(data / "m.csv")
    manifest = pd.read_parquet("data/manifests/ingested.parquet").set_index("source_path")
    assert sorted(manifest.index) == ["imgs/x.png", "imgs/y.png"]
    assert manifest.loc["imgs/y.png", "given_split"] == "test"
    skipped = pd.read_csv("reports/ingest/skipped.csv").set_index("source_path")["reason"].to_dict()
    assert skipped == {"../outside.png": "outside_source", "imgs/missing.png": "missing"}
    _run(data / "m.csv", allow_outside_paths=True)
    assert "../outside.png" in set(pd.read_parquet("data/manifests/ingested.parquet")["source_path"])


def test_parquet_manifest_with_custom_columns_and_missing_column_error(project):
    write_png(project.root / "d" / "x.png", pattern(1))
    pd.DataFrame({"file": ["x.png"], "cls": ["a"]}).to_parquet(project.root / "d" / "m.parquet")
    _run(project.root / "d" / "m.parquet", path_column="file", label_column="cls")
    assert len(pd.read_parquet("data/manifests/ingested.parquet")) == 1
    with pytest.raises(UserError, match="missing column.*path.*columns: file, cls"):
        _run(project.root / "d" / "m.parquet")


def test_missing_source_is_one_line_error(project):
    with pytest.raises(UserError, match="does not exist"):
        _run(project.root / "nope")


def test_inbox_is_merged(project):
    src = _folder(project.root / "src", {"cat/a.png": 1})
    _folder(project.root / "data" / "inbox", {"dog/new.png": 9})
    summary = _run(src)
    manifest = pd.read_parquet("data/manifests/ingested.parquet")
    assert summary["from_inbox"] == 1
    assert manifest.set_index("label").loc["dog", "origin"] == "inbox"


def test_rerun_hashes_and_copies_only_new_files(project):
    src = _folder(project.root / "src", {f"c{i % 3}/{i}.png": i for i in range(100)})
    first = _run(src)
    assert first["hashed"] == 100 and first["copied"] == 100
    first_times = pd.read_parquet("data/manifests/ingested.parquet").set_index("source_path")["ingested_at"]
    write_png(src / "c0" / "new.png", pattern(1000))
    second = _run(src)
    assert second["hashed"] == 1 and second["copied"] == 1 and second["images"] == 101
    times = pd.read_parquet("data/manifests/ingested.parquet").set_index("source_path")["ingested_at"]
    assert (times[first_times.index] == first_times).all()


def test_removed_source_files_leave_the_store(project):
    src = _folder(project.root / "src", {"a/1.png": 1, "a/2.png": 2})
    _run(src)
    gone = pd.read_parquet("data/manifests/ingested.parquet").set_index("source_path").loc["a/2.png", "image_id"]
    os.remove(src / "a" / "2.png")
    assert _run(src)["pruned_from_store"] == 1
    assert not store_path("data/store", gone).exists()


def test_sample_digits_is_real_pngs(project):
    summary = _run("sample:digits", sample_upscale=2)
    manifest = pd.read_parquet("data/manifests/ingested.parquet")
    assert summary["images"] == 1797 and summary["classes"] == 10
    assert set(manifest["format"]) == {"PNG"} and set(manifest["width"]) == {16}
    with pytest.raises(UserError, match="unknown sample"):
        _run("sample:cifar")
