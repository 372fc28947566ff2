"""The label-decisions file (tasks/common/label_decisions.py): append-only history, latest wins, ingest's
apply step and validate's human-checked mask."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tasks.common import label_decisions as ld
from tasks.common.errors import UserError


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_round_trip_history_and_latest_wins(tmp_path):
    path = tmp_path / "data" / "label_decisions.csv"
    assert ld.load_latest(path) == {} and ld.load_for_ingest(path) is None
    ld.append(path, [ld.make_decision(sha(1), "keep", note="looks fine", user="ann")], tmp_path / "cache")
    ld.append(
        path,
        [
            ld.make_decision(sha(1), "RELABEL", label="dog", note="  a   dog\nafter all ", user="bob"),
            ld.make_decision(sha(2), "exclude", label="ignored", user="bob", via="csv"),
        ],
        tmp_path / "cache",
    )
    ld.append(path, [ld.make_decision(sha(1), "exclude", user="cy")], tmp_path / "cache")

    history = ld.read_history(path)
    assert list(history.columns) == ld.COLUMNS
    assert history["sha256"].tolist() == [sha(1), sha(1), sha(2), sha(1)]  # append-only, in order
    assert history["decision"].tolist() == ["keep", "relabel", "exclude", "exclude"]
    assert history["user"].tolist() == ["ann", "bob", "bob", "cy"]
    assert history.loc[1, "note"] == "a dog after all" and history.loc[1, "label"] == "dog"
    assert history.loc[2, "label"] == "" and history.loc[2, "via"] == "csv"  # only a relabel has a label
    assert all(pd.Timestamp(t).tzinfo is not None for t in history["decided_at"])
    latest = ld.load_latest(path)
    assert latest[sha(1)].decision == "exclude" and latest[sha(1)].user == "cy"
    assert latest[sha(2)].decision == "exclude"
    # nothing but the file: no temporary left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["label_decisions.csv"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("abc", "keep"), "is not a SHA-256"),
        ((sha(1), "approve"), "decision 'approve' is not one of keep, relabel, exclude"),
        ((sha(1), "relabel"), "relabel needs the new label"),
    ],
)
def test_bad_decisions_are_one_line(args, message):
    with pytest.raises(UserError, match=message) as exc:
        ld.make_decision(*args)
    assert "\n" not in str(exc.value)


def test_unknown_label_names_the_known_classes():
    decision = ld.make_decision(sha(1), "relabel", "zebra", user="u")
    with pytest.raises(UserError) as exc:
        ld.check_labels([decision], {"cat", "dog"})
    assert str(exc.value) == (
        f"{sha(1)[:12]}: unknown label 'zebra' (known classes: cat, dog); list new classes in validate.classes first"
    )
    ld.check_labels([ld.make_decision(sha(1), "relabel", "dog")], {"cat", "dog"})


def test_a_damaged_file_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(f"sha256,decision,label\n{sha(1)},keep,\n{sha(2)},relabel,\n")
    with pytest.raises(UserError, match=r"d.csv line 3: not a decision"):
        ld.read_history(path)
    path.write_text("hash,what\n")
    with pytest.raises(UserError, match="missing column"):
        ld.read_history(path)


def test_apply_decisions_relabels_excludes_and_marks(tmp_path):
    rows = [
        {"image_id": sha(i), "source_path": f"cat/{i}.png", "label": "cat"} for i in range(4)
    ]  # 0 relabel, 1 exclude, 2 keep, 3 undecided
    decided = {
        sha(0): ld.make_decision(sha(0), "relabel", "dog", user="u"),
        sha(1): ld.make_decision(sha(1), "exclude", note="blurry", user="u"),
        sha(2): ld.make_decision(sha(2), "keep", user="u"),
    }
    kept, skipped = ld.apply_decisions(rows, decided)
    assert [(r["label"], r["original_label"], r["review_decision"]) for r in kept] == [
        ("dog", "cat", "relabel"),
        ("cat", "cat", "keep"),
        ("cat", "cat", ""),
    ]
    assert skipped == [
        {"source_path": "cat/1.png", "reason": "excluded_by_review", "detail": skipped[0]["detail"]},
    ]
    assert skipped[0]["detail"].startswith("exclude by u at ") and skipped[0]["detail"].endswith(": blurry")
    again, _ = ld.apply_decisions(kept, decided)  # idempotent: the source's label is not lost
    assert again[0]["original_label"] == "cat" and again[0]["label"] == "dog"
    assert ld.apply_decisions(rows, None) == (rows, [])


def test_resolve_a_prefix():
    known = [sha(1), sha(2)]
    assert ld.resolve(sha(1)[:10].upper(), known) == sha(1)
    with pytest.raises(UserError, match="no image with this SHA-256"):
        ld.resolve("0" * 64, known)
    with pytest.raises(UserError, match="prefix of 2 images"):
        ld.resolve(sha(1)[:8], [sha(1), sha(1)[:8] + "f" * 56])
    with pytest.raises(UserError, match="not a SHA-256 or a prefix"):
        ld.resolve("xyz", known)


def test_human_checked_from_the_manifest_or_ingests(tmp_path):
    frame = pd.DataFrame({"image_id": [sha(0), sha(1), sha(2)], "review_decision": ["keep", "", "relabel"]})
    assert ld.human_checked(frame).tolist() == [True, False, True]
    ingested = tmp_path / "ingested.parquet"
    frame.iloc[::-1].to_parquet(ingested)  # a later stage dropped the column: looked up by image_id
    assert ld.human_checked(frame[["image_id"]], ingested).tolist() == [True, False, True]
    frame[["image_id"]].to_parquet(ingested)  # ingest ran without a decisions file
    assert ld.human_checked(frame[["image_id"]], ingested).tolist() == [False, False, False]
    assert ld.human_checked(frame[["image_id"]], tmp_path / "none.parquet").tolist() == [False] * 3
