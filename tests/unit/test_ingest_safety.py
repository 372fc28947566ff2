"""ingest on hostile or careless folders and manifests: symlinks out of the source, dangling links,
loops, FIFOs, sockets and devices, blank class folders, blank / NaN labels, and numbers as labels.
Every case is a real file-system object; every one ends in skipped.csv with a reason, never a hang
or a traceback."""

from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import pytest

from tasks.common.params import Paths
from tasks.ingest import Params, _describe_file, _Unusable, label_text, run
from tests.helpers.images import pattern, write_png

pytestmark = pytest.mark.timeout(60)  # a FIFO opened for reading would block forever


def _run(source, **kw):
    return run(Params(source=str(source), **kw), Paths())


def _manifest() -> dict[str, str]:
    return dict(pd.read_parquet("data/manifests/ingested.parquet")[["source_path", "label"]].values.tolist())


def _skipped() -> dict[str, str]:
    return pd.read_csv("reports/ingest/skipped.csv", keep_default_na=False).set_index("source_path")["reason"].to_dict()


@pytest.fixture
def src(project):
    root = project.root / "src"
    write_png(root / "cat" / "a.png", pattern(1))
    write_png(root / "dog" / "b.png", pattern(2))
    return root


def test_symlinked_files_are_followed_only_inside_the_source(src, project):
    secret = write_png(project.root / "outside" / "secret.png", pattern(3))
    os.symlink(secret, src / "cat" / "escape.png")
    os.symlink("../dog/b.png", src / "cat" / "alias.png")  # relative, stays inside
    _run(src)
    assert _manifest() == {"cat/a.png": "cat", "cat/alias.png": "cat", "dog/b.png": "dog"}
    assert _skipped() == {"cat/escape.png": "outside_source"}
    _run(src, allow_outside_paths=True)
    assert _manifest()["cat/escape.png"] == "cat"


def test_symlinked_class_folders_inside_followed_outside_reported(src, project):
    write_png(project.root / "elsewhere" / "bird" / "c.png", pattern(4))
    os.symlink(project.root / "elsewhere" / "bird", src / "bird")
    os.symlink("cat", src / "kitten")
    _run(src)
    assert _manifest() == {"cat/a.png": "cat", "dog/b.png": "dog", "kitten/a.png": "kitten"}
    assert _skipped() == {"bird": "outside_source"}
    _run(src, allow_outside_paths=True)
    assert _manifest()["bird/c.png"] == "bird"


def test_dangling_and_looping_links_are_reported(src):
    os.symlink(src / "cat" / "gone.png", src / "cat" / "dangling.png")
    os.symlink("self.png", src / "cat" / "self.png")
    os.symlink("..", src / "dog" / "up")  # a folder link back to the source root
    os.symlink(".", src / "dog" / "here")
    _run(src)
    assert _manifest() == {"cat/a.png": "cat", "dog/b.png": "dog"}
    skipped = pd.read_csv("reports/ingest/skipped.csv").set_index("source_path")
    assert skipped["reason"].to_dict() == {
        "cat/dangling.png": "broken_link",
        "cat/self.png": "broken_link",
        "dog/up": "link_loop",
        "dog/here": "link_loop",
    }
    assert skipped.loc["cat/self.png", "detail"] == "symlink loop"


def test_fifos_sockets_and_devices_are_never_opened(src, project):
    os.mkfifo(src / "cat" / "pipe.png")
    os.symlink("pipe.png", src / "cat" / "to_pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "dog" / "sock.png"))
    os.symlink("/dev/zero", src / "dog" / "zero.png")  # endless if it were read
    try:
        _run(src)
        _run(src, allow_outside_paths=True)  # /dev/zero reached: still not read
    finally:
        sock.close()
    assert _manifest() == {"cat/a.png": "cat", "dog/b.png": "dog"}
    skipped = pd.read_csv("reports/ingest/skipped.csv").set_index("source_path")
    assert skipped["reason"].to_dict() == {
        "cat/pipe.png": "not_regular",
        "cat/to_pipe.png": "not_regular",
        "dog/sock.png": "not_regular",
        "dog/zero.png": "not_regular",
    }
    assert skipped.loc["cat/pipe.png", "detail"].startswith("a FIFO")
    assert skipped.loc["dog/zero.png", "detail"].startswith("a character device")


def test_a_file_swapped_for_a_fifo_after_the_scan_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "late.png")
    with pytest.raises(_Unusable) as caught:
        _describe_file(tmp_path / "late.png")
    assert caught.value.reason == "not_regular"
    os.symlink(tmp_path / "late.png", tmp_path / "link.png")
    with pytest.raises(_Unusable) as caught:  # a link where a resolved file was: not followed
        _describe_file(tmp_path / "link.png")
    assert caught.value.reason == "unreadable"


def test_blank_class_folder_is_reported(src):
    write_png(src / "   " / "c.png", pattern(5))
    write_png(src / " bird " / "d.png", pattern(6))
    write_png(src / "nan" / "e.png", pattern(7))  # a folder name is a name, even this one
    _run(src)
    assert _manifest() == {"cat/a.png": "cat", "dog/b.png": "dog", " bird /d.png": "bird", "nan/e.png": "nan"}
    skipped = pd.read_csv("reports/ingest/skipped.csv").set_index("source_path")
    assert skipped["reason"].to_dict() == {"   /c.png": "no_label"}
    assert "blank" in skipped.loc["   /c.png", "detail"]


def _images(root, n):
    for i in range(n):
        write_png(root / f"{i}.png", pattern(10 + i))


def test_blank_and_nan_manifest_labels_are_reported(project):
    root = project.root / "m"
    _images(root, 6)
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": ["cat", "", "   ", "nan", "NaN", "dog"]}).to_csv(
        root / "m.csv", index=False
    )
    _run(root / "m.csv")
    assert _manifest() == {"0.png": "cat", "5.png": "dog"}
    assert _skipped() == {f"{i}.png": "no_label" for i in range(1, 5)}
    pd.DataFrame(
        {"path": [f"{i}.png" for i in range(5)], "label": pd.array(["cat", None, np.nan, " ", "dog"], dtype=object)}
    ).to_parquet(root / "m.parquet")
    _run(root / "m.parquet")
    assert _manifest() == {"0.png": "cat", "4.png": "dog"}
    assert _skipped() == {f"{i}.png": "no_label" for i in range(1, 4)}
    pd.DataFrame({"path": ["0.png", "1.png", None], "label": [1.0, np.nan, 2.0]}).to_parquet(root / "f.parquet")
    _run(root / "f.parquet")
    assert _manifest() == {"0.png": "1"}
    assert _skipped() == {"1.png": "no_label", "": "missing"}


def test_integer_and_float_labels_are_one_class(project):
    root = project.root / "m"
    _images(root, 4)
    paths = [f"{i}.png" for i in range(4)]
    seen = []
    for table, name in (
        (pd.DataFrame({"path": paths, "label": [3, 3, 7, 7]}), "int.parquet"),
        (pd.DataFrame({"path": paths, "label": [3.0, 3.0, 7.0, 7.0]}), "float.parquet"),
        (pd.DataFrame({"path": paths, "label": pd.array([3, 3, 7, 7], dtype="Int64")}), "nullable.parquet"),
        (pd.DataFrame({"path": paths, "label": ["3", "3.0", "7", "7."]}), "text.csv"),
    ):
        if name.endswith(".parquet"):
            table.to_parquet(root / name)
        else:
            table.to_csv(root / name, index=False)
        _run(root / name)
        seen.append(_manifest())
    assert all(found == {"0.png": "3", "1.png": "3", "2.png": "7", "3.png": "7"} for found in seen), seen
    values = (2.5, "2.50", np.int64(4), np.float32(4.0), " 7.0 ", "007", "cat ", pd.NA, None, float("nan"))
    assert [label_text(v) for v in values] == ["2.5", "2.5", "4", "4", "7", "007", "cat", "", "", ""]


def test_manifest_rows_naming_fifos_and_dangling_links(project):
    root = project.root / "m"
    _images(root, 1)
    os.mkfifo(root / "pipe.png")
    os.symlink(root / "nothing.png", root / "dangling.png")
    pd.DataFrame({"path": ["0.png", "pipe.png", "dangling.png"], "label": ["a", "a", "a"]}).to_csv(
        root / "m.csv", index=False
    )
    _run(root / "m.csv")
    assert _manifest() == {"0.png": "a"}
    assert _skipped() == {"pipe.png": "not_regular", "dangling.png": "broken_link"}
