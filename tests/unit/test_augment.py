"""augment: params validation of transform lists, the saved albumentations specs, and the prepared
store written from a split manifest + image store of tiny generated PNGs."""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models import transforms
from tasks import augment
from tasks.common.errors import UserError
from tasks.common.images import decode, to_array
from tasks.common.manifest import store_path
from tasks.common.params import ParamsError, Paths, load_stage

# one entry per kind of augmentation the params must be able to express (albumentations 2.0.8 names)
SPECS = [
    {"name": "HorizontalFlip", "p": 1.0},
    {"name": "Rotate", "limit": [-10, 10], "p": 1.0},
    {"name": "Affine", "translate_percent": [-0.1, 0.1], "rotate": [-10, 10], "scale": [0.9, 1.1], "p": 1.0},
    {"name": "Equalize", "p": 1.0},
    {"name": "CLAHE", "clip_limit": 2.0, "p": 1.0},
    {"name": "ToGray", "p": 1.0},
    {"name": "GaussianBlur", "blur_limit": [3, 5], "p": 1.0},
    {"name": "RandomResizedCrop", "scale": [0.7, 1.0], "p": 1.0},
    {"name": "ColorJitter", "brightness": 0.3, "contrast": 0.3, "p": 1.0},
    {
        "name": "CoarseDropout",
        "num_holes_range": [1, 3],
        "hole_height_range": [0.1, 0.3],
        "hole_width_range": [0.1, 0.3],
        "p": 1.0,
    },
]


def write_params(tmp_path, augment_section: str):
    path = tmp_path / "params.yaml"
    path.write_text(f"paths:\n  store: {tmp_path}/store\naugment:\n{augment_section}", encoding="utf-8")
    return path


def load_error(tmp_path, augment_section: str) -> tuple[str, object]:
    path = write_params(tmp_path, augment_section)
    with pytest.raises(ParamsError) as info:
        load_stage("augment", path)
    return str(info.value), path


def test_unknown_transform_is_one_line_with_close_match(tmp_path):
    message, path = load_error(
        tmp_path,
        """  transforms:
    - {name: Affine, rotate: [-5, 5]}
    - {name: GaussianBlur}
    - {name: HorizontalFlp, p: 0.5}
""",
    )
    assert (
        message
        == f"{path}: augment.transforms[2].name: unknown transform 'HorizontalFlp' (did you mean HorizontalFlip?)"
    )


def test_unknown_argument_is_one_line_with_close_match(tmp_path):
    message, path = load_error(tmp_path, "  transforms:\n    - {name: Affine, rotat: 10}\n")
    assert message == f"{path}: augment.transforms[0].rotat: unknown argument 'rotat' of Affine (did you mean rotate?)"


def test_bad_argument_value_names_the_argument(tmp_path):
    message, _ = load_error(tmp_path, "  transforms:\n    - {name: CoarseDropout, p: 2}\n")
    assert "augment.transforms[0].p: CoarseDropout: Input should be less than or equal to 1" in message
    assert "\n" not in message


def test_cli_reports_bad_transform_without_traceback(tmp_path, capsys):
    path = write_params(tmp_path, "  transforms:\n    - {name: GausianBlur}\n")
    assert augment.main(["--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert "augment.transforms[0].name: unknown transform 'GausianBlur' (did you mean GaussianBlur or" in err
    assert len(err.strip().splitlines()) == 1


def test_default_params_equal_params_yaml():
    import yaml

    section = yaml.safe_load(open("params.yaml", encoding="utf-8"))["augment"]
    assert augment.Params.model_validate(section) == augment.Params()


@pytest.mark.filterwarnings("ignore:The image is already gray")  # ToGray on a 1-channel image: a no-op
@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_listed_transform_builds_and_runs(spec, channels):
    params = augment.Params(image_size=24, transforms=[spec])
    compose = transforms.build(params.transforms, [0.5] * channels, [0.25] * channels)
    image = np.random.default_rng(0).integers(0, 256, (24, 24, channels), dtype=np.uint8)
    out = compose(image=image)["image"]
    assert out.shape == (24, 24, channels) and out.dtype == np.float32


def test_crop_size_follows_image_size():
    params = augment.Params(image_size=40, transforms=[{"name": "RandomResizedCrop"}])
    assert params.transforms[0]["size"] == [40, 40]


def test_saved_spec_round_trips_with_same_seed(tmp_path):
    params = augment.Params(image_size=24, transforms=SPECS)
    built = transforms.build(params.transforms, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    transforms.save(built, tmp_path / transforms.TRAIN_SPEC)
    transforms.save(transforms.build_eval([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]), tmp_path / transforms.EVAL_SPEC)
    loaded, eval_tf = transforms.load_transforms(tmp_path)
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    built.set_random_seed(7)
    loaded.set_random_seed(7)
    for _ in range(5):
        np.testing.assert_array_equal(built(image=image)["image"], loaded(image=image)["image"])
    expected = (image / 255.0 - [0.4, 0.5, 0.6]) / [0.2, 0.25, 0.3]
    np.testing.assert_allclose(eval_tf(image=image)["image"], expected, atol=1e-5)


# ---- the stage on a generated store ----------------------------------------------------------


def png_bytes(rng, mode: str, size: int = 12) -> bytes:
    gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
    if mode == "RGB":
        img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    elif mode == "P":  # palette file whose colours are all gray
        img = Image.fromarray(gray, "L").convert("RGB").quantize(colors=16)
        img.putpalette([v for g in range(0, 256, 16) for v in (g, g, g)])
    else:
        img = Image.fromarray(gray, "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_project(tmp_path, counts: dict[str, dict[str, int]], color: bool = False, suspects=()) -> Paths:
    """Store + split manifest. counts: label -> split -> images; `suspects`: (label, split) pairs whose
    first image is marked suspect_label. Gray sets mix L and gray palette files."""
    rng = np.random.default_rng(0)
    paths = Paths(
        store=str(tmp_path / "store"),
        split=str(tmp_path / "split.parquet"),
        prepared=str(tmp_path / "prepared"),
        reports=str(tmp_path / "reports"),
    )
    rows = []
    for label, splits in counts.items():
        for split, n in splits.items():
            for k in range(n):
                mode = "RGB" if color and k == 0 else ("P" if k % 3 == 2 else "L")
                data = png_bytes(rng, mode)
                image_id = hashlib.sha256(data).hexdigest()
                target = store_path(paths.store, image_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                rows.append(
                    {
                        "image_id": image_id,
                        "label": label,
                        "split": split,
                        "mode": mode,
                        "suspect_label": k == 0 and (label, split) in suspects,
                        "given_probability": float("nan"),
                    }
                )
    pd.DataFrame(rows).to_parquet(paths.split, index=False)
    return paths


COUNTS = {
    "a": {"train": 8, "val": 2, "test": 2},
    "b": {"train": 4, "val": 2, "test": 1},
    "c": {"train": 2, "val": 1, "test": 1},
}


def test_prepared_store_contract(tmp_path):
    paths = make_project(tmp_path, COUNTS, suspects={("a", "train"), ("b", "val")})
    params = augment.Params(image_size=16, workers=1, preview={"images": 3, "draws": 4})
    result = augment.run(params, paths)
    prepared = tmp_path / "prepared"
    images = np.load(prepared / "images.npy", mmap_mode="r")
    index = pd.read_parquet(prepared / "index.parquet")
    stats = json.loads((prepared / "stats.json").read_text())
    manifest = pd.read_parquet(paths.split)

    assert json.loads((prepared / "classes.json").read_text()) == ["a", "b", "c"]
    assert list(index.columns) == augment.INDEX_COLUMNS
    assert images.dtype == np.uint8 and images.shape == (len(manifest) - 1, 16, 16, 1)
    assert stats["channels"] == 1 and stats["image_size"] == 16 and result["channels"] == 1
    assert stats["test_time_flip"] is False  # the model-side switch travels with the stats
    # every stored image is the decoded store file, resized, with the label it was given
    by_id = manifest.set_index("image_id")
    for row in index.itertuples():
        expected = to_array(decode(store_path(paths.store, row.image_id)), 16, 1)
        np.testing.assert_array_equal(images[row.row], expected)
        assert by_id.loc[row.image_id, "label"] == row.label == ["a", "b", "c"][row.label_idx]
        assert by_id.loc[row.image_id, "split"] == row.split

    # suspects: left out of train only
    suspects = manifest[manifest["suspect_label"]].set_index("split")["image_id"]
    assert suspects["train"] not in set(index["image_id"])
    assert suspects["val"] in set(index.loc[index["split"] == "val", "image_id"])
    assert result["suspects_excluded"] == 1

    # stats: plain numpy over the train images on 0..1
    train = images[index.loc[index["split"] == "train", "row"].to_numpy()].astype(np.float64) / 255.0
    np.testing.assert_allclose(stats["mean"], [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(stats["std"], [train.std()], rtol=1e-7)

    # specs: train ends with Normalize(train stats), eval is Normalize only
    train_tf, eval_tf = transforms.load_transforms(prepared)
    normalize = train_tf.transforms[-1]
    assert type(normalize).__name__ == "Normalize" and list(normalize.mean) == pytest.approx(stats["mean"])
    assert [type(t).__name__ for t in eval_tf.transforms] == ["Normalize"]

    # preview: 3 rows x (stored + 4 draws) cells of 64 px (16 px scaled x4) with 2 px gaps
    preview = Image.open(tmp_path / "reports" / "augment" / "preview.png")
    assert preview.size == (5 * 66 + 2, 3 * 66 + 2)
    assert "| a | 7 | 2 | 2 | 0 |" in (tmp_path / "reports" / "augment" / "summary.md").read_text()


def test_balancing_reaches_target_ratio(tmp_path):
    paths = make_project(tmp_path, COUNTS)
    params = augment.Params(image_size=12, workers=1, balance={"enabled": True, "target_ratio": 0.75})
    result = augment.run(params, paths)
    index = pd.read_parquet(tmp_path / "prepared" / "index.parquet")
    train = index[index["split"] == "train"]
    per_class = train["label"].value_counts()
    assert per_class["a"] == 8 and per_class["b"] == per_class["c"] == math.ceil(0.75 * 8)
    copies = train[train["balance_copy"]]
    assert result["balance_copies"] == len(copies) == 2 + 4
    # copies repeat rows of their own class's train images, each image used evenly
    originals = train[~train["balance_copy"]].set_index("row")
    assert (originals.loc[copies["row"], "label"].to_numpy() == copies["label"].to_numpy()).all()
    assert copies[copies["label"] == "c"]["row"].value_counts().tolist() == [2, 2]
    assert not index[index["split"] != "train"]["balance_copy"].any()


def test_channels_auto_is_three_for_colour_images(tmp_path):
    paths = make_project(tmp_path, {"a": {"train": 3}, "b": {"train": 3}}, color=True)
    augment.run(augment.Params(image_size=12, workers=1), paths)
    images = np.load(tmp_path / "prepared" / "images.npy")
    assert images.shape[-1] == 3
    assert json.loads((tmp_path / "prepared" / "stats.json").read_text())["channels"] == 3


def test_worker_pool_gives_the_same_store(tmp_path):
    counts = {"a": {"train": 40}, "b": {"train": 30}}  # over the 64-image threshold for a pool
    one = augment.run(augment.Params(image_size=12, workers=1), make_project(tmp_path / "one", counts))
    two = augment.run(augment.Params(image_size=12, workers=2), make_project(tmp_path / "two", counts))
    np.testing.assert_array_equal(
        np.load(tmp_path / "one" / "prepared" / "images.npy"), np.load(tmp_path / "two" / "prepared" / "images.npy")
    )
    assert one["mean"] == two["mean"]


def test_unknown_split_value_is_a_user_error(tmp_path):
    paths = make_project(tmp_path, {"a": {"train": 2, "holdout": 1}})
    with pytest.raises(UserError, match="split value"):
        augment.run(augment.Params(image_size=12, workers=1), paths)


def test_shape_changing_transform_is_refused(tmp_path):
    paths = make_project(tmp_path, {"a": {"train": 2}, "b": {"train": 2}})
    params = augment.Params(image_size=16, workers=1, transforms=[{"name": "RandomResizedCrop", "size": [8, 8]}])
    with pytest.raises(UserError, match="every transform must keep image_size"):
        augment.run(params, paths)
    assert not (tmp_path / "prepared").exists()


def test_failing_run_leaves_previous_store_intact(tmp_path):
    paths = make_project(tmp_path, COUNTS)
    params = augment.Params(image_size=12, workers=1)
    augment.run(params, paths)
    prepared = tmp_path / "prepared"
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}

    victim = store_path(paths.store, pd.read_parquet(paths.split)["image_id"].iloc[3])
    victim.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="re-run ingest and clean"):
        augment.run(params, paths)
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")) == []
