"""clean and split on grown data cost what is new and give what a cold run gives: a project run on n
images, then again after a few more arrive (planted near-duplicates, duplicates and label conflicts
among them, some of which change the verdict on images already there), ends with the same manifests
and flags as a project run once on all of them; the re-run decodes only the new images."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.planted import plant
from tasks import clean, ingest, split
from tasks.checks import inspection_cache
from tasks.checks.phash import radius_pairs
from tasks.checks.registration import Ranks
from tasks.common.manifest import VALIDATE_COLUMNS
from tasks.common.params import Paths
from tests.helpers.images import digit_pictures

NEAR_KINDS = ("resize_up", "shift_1px", "brightness", "jpeg_q90")  # near-duplicates clean always finds


def _digits(per_class: int = 40) -> list[tuple[np.ndarray, str]]:
    return digit_pictures(per_class, (0, 1))


def _arriving_later(truth: pd.DataFrame) -> list[str]:
    """The images that arrive in the second run: the ORIGINALS of two near-duplicates (so a copy kept
    in the first run is set aside in the second), the copies of two others, a duplicate, the second
    half of a label conflict (the first half, kept before, is then flagged) and two plain images."""
    near = truth[truth["planted_reason"] == "near_duplicate"]["detail"].str.rsplit(" of ", n=1).str[1]
    copies = truth[truth["planted_reason"] == "near_duplicate"]["source_path"]
    conflict = truth[truth["source_path"].str.endswith("_conflict.png")]["source_path"]
    plain = truth[truth["planted_reason"] == "clean"]["source_path"]
    duplicate = truth[truth["planted_reason"] == "duplicate"]["source_path"]
    return sorted({*near.iloc[:2], *copies.iloc[2:4], duplicate.iloc[0], conflict.iloc[0], *plain.iloc[-2:]})


def _clean_and_split(paths: Paths) -> tuple[dict, dict]:
    cleaned = clean.run(clean.Params(), paths)
    # validate's own work is not under test: its manifest is clean's plus validate's columns
    frame = pd.read_parquet(paths.cleaned).assign(suspect_label=False, given_probability=np.nan)
    frame[list(frame.columns[: -len(VALIDATE_COLUMNS)]) + VALIDATE_COLUMNS].to_parquet(paths.validated, index=False)
    return cleaned, split.run(split.Params(), paths)


def _outputs(paths: Paths) -> dict:
    reports = paths.report_dir("clean")
    return {
        "cleaned": pd.read_parquet(paths.cleaned),
        "split": pd.read_parquet(paths.split),
        "flagged.csv": (reports / "flagged.csv").read_bytes(),
        "summary.md": (reports / "summary.md").read_bytes(),
    }


def _enter(folder, monkeypatch) -> None:
    """A project folder of its own as the working directory (Paths() is relative to it)."""
    folder.mkdir()
    monkeypatch.chdir(folder)


@pytest.fixture
def planted_source(tmp_path):
    truth = plant(_digits(), tmp_path / "planted", seed=2, per_fault=1, flip_fraction=0, near_kinds=NEAR_KINDS)
    return tmp_path / "planted" / "images", _arriving_later(truth)


def test_cold_run_equals_run_then_new_images(planted_source, tmp_path, monkeypatch):
    images, later = planted_source
    held = tmp_path / "held_back"
    for rel in later:
        (held / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(images / rel, held / rel)

    # incremental: n images, then the rest arrive in the same source folder
    _enter(tmp_path / "incremental", monkeypatch)
    paths = Paths()
    ingest.run(ingest.Params(source=str(images)), paths)
    _clean_and_split(paths)
    first_flags = (paths.report_dir("clean") / "flagged.csv").read_bytes()
    sheet = paths.report_dir("clean") / "flagged.png"
    first_sheet = sheet.stat().st_mtime_ns
    known = set(pd.read_parquet(paths.ingested)["image_id"])
    for rel in later:
        shutil.copy(held / rel, images / rel)
    ingest.run(ingest.Params(source=str(images)), paths)
    new_ids = set(pd.read_parquet(paths.ingested)["image_id"]) - known
    cleaned, splitted = _clean_and_split(paths)
    incremental = _outputs(paths)

    # the re-run decoded the new images only; split took every aligned copy from clean's cache
    assert len(new_ids) == len(later) and cleaned["decoded"] == len(new_ids)
    assert splitted["decoded"] == 0
    assert incremental["flagged.csv"] != first_flags  # the new images changed verdicts on old ones
    assert sheet.stat().st_mtime_ns != first_sheet  # ...so the contact sheet was drawn again
    key = inspection_cache.near_index_key(
        clean.Params().near_duplicate_distance, clean.Params().near_duplicate_min_similarity
    )
    members = inspection_cache.load_near_index(Path(paths.cache) / inspection_cache.NEAR_INDEX_FILE, key).members
    assert new_ids <= set(members)  # the new images joined the persisted near-duplicate index

    # nothing new: nothing decoded, the pictures are not drawn again, the CSV is written all the same
    drawn, csv = sheet.stat().st_mtime_ns, paths.report_dir("clean") / "flagged.csv"
    csv.unlink()
    assert clean.run(clean.Params(), paths)["decoded"] == 0
    assert sheet.stat().st_mtime_ns == drawn and csv.read_bytes() == incremental["flagged.csv"]

    # cold: a fresh project (no cache) on the same final data: the incremental run's ingested manifest
    _enter(tmp_path / "cold", monkeypatch)
    ingested = Path(Paths().ingested)
    ingested.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "incremental" / paths.ingested, ingested)
    shutil.copytree(tmp_path / "incremental" / paths.store, Paths().store)
    cold_cleaned, cold_split = _clean_and_split(Paths())
    cold = _outputs(Paths())
    assert cold_cleaned["decoded"] == len(set(pd.read_parquet(Paths().ingested)["image_id"]))
    assert cold_split["decoded"] == 0  # clean's cache serves split on a cold run too

    # split's groups from clean's index == split's own search (the same rule, on copies
    # that all come from clean's cache, none decoded), here with a wide radius that has candidates
    validated = pd.read_parquet(Paths().validated)
    cache_file = Path(Paths().cache) / inspection_cache.INSPECTIONS_FILE
    for wide in (False, True):
        params = split.Params(group_radius=14 if wide else split.Params().group_radius)
        pairs, decoded = split.searched_pairs(validated, Paths().store, params, cache_file)
        searched, _ = split.assign_splits(validated, params, pairs)
        indexed = split.indexed_pairs(validated, params, Path(Paths().cache))
        if wide:
            assert indexed is None  # built for another radius: split must search itself
            assert decoded == 0 and len(radius_pairs(validated["phash"].to_numpy(), 14))
        else:
            assert (split.assign_splits(validated, params, pairs=indexed)[0] == searched).all()
            assert (searched == cold["split"]["split"]).all()

    pd.testing.assert_frame_equal(incremental["cleaned"], cold["cleaned"])
    pd.testing.assert_frame_equal(incremental["split"], cold["split"])
    assert incremental["flagged.csv"] == cold["flagged.csv"]
    assert incremental["summary.md"] == cold["summary.md"]


def test_near_index_of_other_settings_is_not_used(tmp_path):
    index = tmp_path / inspection_cache.NEAR_INDEX_FILE
    pairs = pd.DataFrame({"a": ["1" * 64], "b": ["2" * 64]})
    ranks = Ranks.unsearched(2)
    ranks.floors[:] = [[0.9 - d / 100, 0.8 - d / 100] for d in range(len(ranks.floors))]  # one row per descriptor
    ranks.nearest[:, 0, 0], ranks.nearest[:, 1, 0] = 1, 0  # each other's nearest, nothing else
    key = inspection_cache.near_index_key(6, 0.9875)
    inspection_cache.save_near_index(index, key, ["1" * 64, "2" * 64], pairs, ranks)
    members, found, found_ranks = inspection_cache.load_near_index(index, key)
    assert members == ["1" * 64, "2" * 64] and found.equals(pairs)
    np.testing.assert_array_equal(found_ranks.floors, ranks.floors)
    np.testing.assert_array_equal(found_ranks.nearest, ranks.nearest)
    for other in (inspection_cache.near_index_key(5, 0.9875), inspection_cache.near_index_key(6, 0.99)):
        members, found, _ = inspection_cache.load_near_index(index, other)
        assert members == [] and found.empty
