import json

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from tasks.augment import Params, run
from tasks.params import ParamsError, Paths, load_stage
from tasks.transforms import TransformStep, compose, load_transforms
from tests.imagegen import pattern, store_image

ALL_STEPS = [
    {"name": "HorizontalFlip", "p": 1.0},
    {"name": "Affine", "translate_percent": [-0.1, 0.1], "rotate": [-15, 15], "p": 1.0},
    {"name": "Rotate", "limit": 10, "p": 1.0},
    {"name": "Equalize", "p": 1.0},
    {"name": "CLAHE", "p": 1.0},
    {"name": "ToGray", "p": 1.0},
    {"name": "GaussianBlur", "blur_limit": [3, 5], "p": 1.0},
    {"name": "RandomResizedCrop", "size": [24, 24], "scale": [0.6, 1.0], "p": 1.0},
    {"name": "ColorJitter", "brightness": 0.3, "contrast": 0.3, "p": 1.0},
    {"name": "CoarseDropout", "num_holes_range": [1, 3], "hole_height_range": [2, 6], "hole_width_range": [2, 6], "p": 1.0},
]


def make_split(root, per_class=(12, 4), splits=("train",) * 8 + ("val",) * 2 + ("test",) * 2, rgb=False, suspects=()):
    store = root / "data" / "store"
    rows = []
    for c, n in enumerate(per_class):
        for i in range(n):
            pixels = pattern(1000 * c + i, size=20, channels=3 if rgb else 1)
            rows.append({"image_id": store_image(store, pixels), "label": f"class{c}",
                         "split": splits[i % len(splits)], "suspect_label": (c, i) in suspects})
    df = pd.DataFrame(rows)
    (root / "data" / "manifests").mkdir(parents=True, exist_ok=True)
    df.to_parquet(root / "data" / "manifests" / "split.parquet")
    return df


@pytest.mark.parametrize("bad, expected", [
    ({"name": "HorizontalFlp"}, r"augment\.transforms\.0: .*unknown transform 'HorizontalFlp' \(did you mean HorizontalFlip"),
    ({"name": "GaussianBlur", "blur_limt": 3}, r"GaussianBlur: unknown argument 'blur_limt' \(did you mean blur_limit\?\)"),
    ({"name": "Rotate", "limit": "lots"}, r"augment\.transforms\.0: .*Rotate: "),
])
def test_bad_transform_is_one_line_naming_it(project, bad, expected):
    path = project.write_params(augment={"transforms": [bad]})
    with pytest.raises(ParamsError, match=expected) as err:
        load_stage("augment", path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_listed_transform_builds_and_runs(channels):
    steps = [TransformStep.model_validate(s) for s in ALL_STEPS]
    image = pattern(3, size=24, channels=channels)
    image = image[:, :, None] if channels == 1 else image
    for step in steps:
        out = compose([step], seed=0)(image=image)["image"]
        assert out.dtype == np.uint8 and out.shape[:2] == (24, 24), step.name


def test_prepared_store_contract_and_spec_round_trip(project):
    make_split(project.root)
    summary = run(Params(image_size=16, transforms=[TransformStep.model_validate(s) for s in ALL_STEPS[1:3]]), Paths())
    prepared = project.root / "data" / "prepared"
    images = np.load(prepared / "images.npy", mmap_mode="r")
    index = pd.read_parquet(prepared / "index.parquet")
    stats = json.loads((prepared / "stats.json").read_text())
    assert images.shape == (16, 16, 16, 1) and images.dtype == np.uint8
    assert json.loads((prepared / "classes.json").read_text()) == ["class0", "class1"]
    train = images[index.loc[index["split"] == "train", "row"]].astype(np.float64) / 255
    assert stats["mean"][0] == pytest.approx(train.mean(), abs=1e-5)
    assert stats["std"][0] == pytest.approx(train.std(), abs=1e-5)
    assert summary["channels"] == 1
    # train loads exactly what augment saved: same seed, same output
    train_tf, eval_tf = load_transforms(prepared)
    assert isinstance(train_tf.transforms[-1], A.Normalize)
    expected = compose([TransformStep.model_validate(s) for s in ALL_STEPS[1:3]], stats["mean"], stats["std"], seed=7)
    train_tf.set_random_seed(7)
    np.testing.assert_allclose(train_tf(image=np.array(images[0]))["image"], expected(image=np.array(images[0]))["image"])
    np.testing.assert_allclose(eval_tf(image=np.array(images[0]))["image"],
                               (images[0] / 255.0 - stats["mean"][0]) / stats["std"][0], atol=1e-5)
    assert (project.root / "reports" / "augment" / "preview.png").stat().st_size > 0


def test_rgb_images_give_three_channels(project):
    make_split(project.root, rgb=True)
    assert run(Params(image_size=16), Paths())["channels"] == 3


def test_balancing_reaches_target_ratio(project):
    make_split(project.root, per_class=(40, 8))
    run(Params(image_size=16, balance={"enabled": True, "target_ratio": 0.8}), Paths())
    index = pd.read_parquet(project.root / "data" / "prepared" / "index.parquet")
    train = index[index["split"] == "train"].groupby("label").size()
    assert train["class1"] >= 0.8 * train["class0"]
    copies = index[index["balance_copy"]]
    assert set(copies["label"]) == {"class1"} and set(copies["split"]) == {"train"}
    assert len(set(copies["row"])) == len(index[(index["label"] == "class1") & (index["split"] == "train") & ~index["balance_copy"]])


def test_suspects_leave_train_only(project):
    df = make_split(project.root, suspects={(0, 0), (0, 8)})  # i=0 train, i=8 val
    run(Params(image_size=16), Paths())
    index = pd.read_parquet(project.root / "data" / "prepared" / "index.parquet")
    suspect_ids = set(df.loc[df["suspect_label"], "image_id"])
    kept = index[index["image_id"].isin(suspect_ids)]
    assert list(kept["split"]) == ["val"]


def test_failed_run_keeps_previous_store(project):
    make_split(project.root)
    run(Params(image_size=16), Paths())
    before = (project.root / "data" / "prepared" / "index.parquet").read_bytes()
    store = project.root / "data" / "store"
    victim = next(p for p in store.rglob("*") if p.is_file())
    victim.write_bytes(b"broken")
    with pytest.raises(Exception, match="cannot decode"):
        run(Params(image_size=16), Paths())
    assert (project.root / "data" / "prepared" / "index.parquet").read_bytes() == before
