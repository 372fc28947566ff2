import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import split
from tasks.common.errors import UserError
from tasks.common.params import ParamsError, Paths, load_stage


def manifest(n, classes=("cat", "dog", "eel"), seed=0, prefix="img"):
    """A validated manifest with unrelated random perceptual hashes (no near-duplicates)."""
    rng = np.random.default_rng(seed)
    ids = [hashlib.sha256(f"{prefix}{seed}-{i}".encode()).hexdigest() for i in range(n)]
    return pd.DataFrame(
        {
            "image_id": ids,
            "source_path": [f"{prefix}/{i}.png" for i in range(n)],
            "label": [classes[i % len(classes)] for i in range(n)],
            "given_split": "",
            "phash": rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64, endpoint=True),
            "suspect_label": False,
            "given_probability": np.nan,
        }
    )


def flip_bits(value, bits):
    out = int(value) & ((1 << 64) - 1)  # the same 64 bits, unsigned
    for b in bits:
        out ^= 1 << b
    return out - (1 << 64) if out >= 1 << 63 else out


def tmp_paths(tmp_path):
    return Paths(
        store=str(tmp_path / "store"),
        validated=str(tmp_path / "validated.parquet"),
        split=str(tmp_path / "split.parquet"),
        reports=str(tmp_path / "reports"),
    )


def test_adding_images_never_moves_existing_ones():
    old = manifest(1000)
    before, _ = split.assign_splits(old, split.Params())
    grown = pd.concat([old, manifest(200, seed=1, prefix="new")], ignore_index=True).sample(frac=1, random_state=1)
    after, _ = split.assign_splits(grown.reset_index(drop=True), split.Params())
    after_by_id = dict(zip(grown["image_id"], after))
    assert all(after_by_id[i] == s for i, s in zip(old["image_id"], before))


def test_each_class_is_split_in_the_given_fractions():
    frame = manifest(1800)
    params = split.Params(train=0.7, val=0.2, test=0.1)
    result, _ = split.assign_splits(frame, params)
    shares = pd.crosstab(frame["label"], result, normalize="index")
    for name in ("train", "val", "test"):
        assert (shares[name] - getattr(params, name)).abs().max() < 0.05, shares


def test_seed_reshuffles():
    frame = manifest(300)
    a, _ = split.assign_splits(frame, split.Params(seed=0))
    b, _ = split.assign_splits(frame, split.Params(seed=1))
    assert (a != b).mean() > 0.15


def test_given_split_is_respected_with_common_spellings():
    frame = manifest(90)
    frame.loc[:29, "given_split"] = "test"
    frame.loc[30:39, "given_split"] = "Validation"
    frame.loc[40:49, "given_split"] = "train"
    result, facts = split.assign_splits(frame, split.Params())
    assert (result[:30] == "test").all() and (result[30:40] == "val").all() and (result[40:50] == "train").all()
    assert facts["given"] == 50


def test_unknown_given_split_is_one_line_error():
    frame = manifest(10)
    frame.loc[3, "given_split"] = "holdout"
    with pytest.raises(UserError) as err:
        split.assign_splits(frame, split.Params())
    assert "holdout" in str(err.value) and "img/3.png" in str(err.value) and "\n" not in str(err.value)


def test_near_duplicate_groups_never_straddle_splits():
    rng = np.random.default_rng(5)
    frame = manifest(300)
    groups = []
    for g in range(60):  # 60 groups of 4: each member 2-3 bits from the previous one (chains)
        base = frame.loc[g, "phash"]
        members = [g]
        for k in range(3):
            row = 60 + 3 * g + k
            frame.loc[row, "phash"] = flip_bits(
                frame.loc[members[-1], "phash"] if k else base,
                [int(b) for b in rng.choice(64, 2 + k % 2, replace=False)],
            )
            members.append(row)
        groups.append(members)
    result, facts = split.assign_splits(frame, split.Params(train=0.5, val=0.25, test=0.25))
    for members in groups:
        assert result[members].nunique() == 1
    assert result[[m[0] for m in groups]].nunique() == 3  # groups themselves are spread over splits
    assert facts["near_duplicate_groups"] == 60
    # group_radius 0 separates them again
    loose, _ = split.assign_splits(frame, split.Params(train=0.5, val=0.25, test=0.25, group_radius=0))
    assert any(loose[m].nunique() > 1 for m in groups)


def test_near_duplicates_follow_a_given_split():
    frame = manifest(20)
    frame.loc[1, "phash"] = flip_bits(frame.loc[0, "phash"], [5])
    frame.loc[0, "given_split"] = "test"
    result, _ = split.assign_splits(frame, split.Params(train=1.0, val=0.0, test=0.0))
    assert result[0] == "test" and result[1] == "test"
    assert (result[2:] == "train").all()


def with_pictures(frame: pd.DataFrame, store) -> pd.DataFrame:
    """`frame` with its image ids replaced by distinct stored pictures: without clean's cache, split
    searches near-duplicates on the images' aligned copies."""
    from tests.helpers.images import pattern, store_image

    return frame.assign(image_id=[store_image(store, pattern(seed, size=32)) for seed in range(len(frame))])


def test_run_writes_manifest_and_reports(tmp_path):
    paths = tmp_paths(tmp_path)
    with_pictures(manifest(120), paths.store).to_parquet(paths.validated, index=False)
    summary = split.run(split.Params(), paths)
    out = pd.read_parquet(paths.split)
    assert len(out) == 120 and set(out["split"]) <= {"train", "val", "test"}
    assert summary["train"] + summary["val"] + summary["test"] == 120
    assert {"suspect_label", "given_probability", "phash"} <= set(out.columns)
    text = (tmp_path / "reports" / "split" / "summary.md").read_text()
    assert "| cat |" in text
    assert (tmp_path / "reports" / "split" / "class_split.png").stat().st_size > 1000


def write_params(tmp_path, split_section):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"paths:\n  validated: {tmp_path}/validated.parquet\n  split: {tmp_path}/split.parquet\n"
        f"  store: {tmp_path}/store\n"
        f"  reports: {tmp_path}/reports\nsplit:\n{split_section}"
    )
    return params


def test_fractions_not_summing_to_one_is_one_line(tmp_path, capsys):
    params = write_params(tmp_path, "  train: 0.8\n  val: 0.1\n  test: 0.2\n")
    with pytest.raises(ParamsError) as err:
        load_stage("split", params)
    message = str(err.value)
    assert "\n" not in message and "split" in message and "sum to 1" in message and "1.1" in message
    assert split.main(["--params", str(params)]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("error: ") and "sum to 1" in stderr and "\n" not in stderr


def test_main_runs_from_params_file(tmp_path, capsys):
    params = write_params(tmp_path, "  seed: 3\n")
    with_pictures(manifest(30), tmp_path / "store").to_parquet(tmp_path / "validated.parquet", index=False)
    assert split.main(["--params", str(params)]) == 0
    assert len(pd.read_parquet(tmp_path / "split.parquet")) == 30


def test_params_yaml_section_equals_the_defaults():
    from tasks.common.params import parse_section, read_yaml

    data = read_yaml(Path(__file__).resolve().parents[2] / "params.yaml")
    assert parse_section(data, "split", split.Params) == split.Params()


def test_hash_neighbours_are_grouped_only_when_their_pictures_correlate(tmp_path):
    """A re-encoded copy follows the original's given split; a different picture whose perceptual hash
    happens to be as close (look-alikes: sneakers, digits) does not, so groups cannot chain through it."""
    from tests.helpers.images import pattern, store_image

    paths = tmp_paths(tmp_path)
    original = pattern(1, size=32)
    ids = [
        store_image(paths.store, original),
        store_image(paths.store, original, fmt="JPEG"),
        store_image(paths.store, pattern(2, size=32)),
    ]
    frame = manifest(3)
    frame["image_id"] = ids
    frame["phash"] = frame.loc[0, "phash"]  # the same hash for all three: only the pictures differ
    frame.loc[0, "given_split"] = "test"
    frame.to_parquet(paths.validated, index=False)

    summary = split.run(split.Params(train=1.0, val=0.0, test=0.0), paths)
    out = pd.read_parquet(paths.split).set_index("image_id")["split"]
    assert [out[i] for i in ids] == ["test", "test", "train"]
    assert summary["near_duplicate_groups"] == 1 and summary["images_in_groups"] == 2
    # without the picture check (the old rule) the look-alike would have been pulled into test too
    unverified, _ = split.assign_splits(frame, split.Params(train=1.0, val=0.0, test=0.0))
    assert list(unverified) == ["test", "test", "test"]
