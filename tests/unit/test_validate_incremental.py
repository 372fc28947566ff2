"""validate on grown data: new images are scored by the fold models of the last fit, which is fitted
again only past suspect_label.refit_growth, on a relabel of an image it learned from, or on a new
class (tasks/validate.py, tasks/checks/suspect_cache.py). Kernel model on small generated pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import validate
from tasks.checks import suspect_cache
from tasks.common.params import Paths
from tests.helpers.images import cleaned_row, store_image

FOLDS = 5
pytestmark = pytest.mark.usefixtures("tracking")  # a store of its own: no champion unless a test registers one


CLASSES = 5


def picture(cls: int, rng, noise: float = 14) -> np.ndarray:
    """A noisy 16x16 picture of class 0-4: horizontal bar, vertical bar, square, diagonal, cross."""
    img = rng.normal(40, noise, (16, 16))
    c = 8 + int(rng.integers(-2, 3))
    idx = np.arange(16)
    if cls == 0:
        img[c - 1 : c + 1, 2:-2] = 220
    elif cls == 1:
        img[2:-2, c - 1 : c + 1] = 220
    elif cls == 2:
        img[c - 4 : c + 3, c - 4 : c + 3] = 220
    elif cls == 3:
        img[idx, (idx + c - 8) % 16] = 220
    else:
        img[c, 3:-3] = 220
        img[3:-3, c] = 220
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def generated():
    """(pictures [N, 16, 16] uint8, their classes): 800 generated images, every one distinct."""
    rng = np.random.default_rng(0)
    truth = np.arange(800) % CLASSES
    return np.stack([picture(int(c), rng) for c in truth]), truth


def workspace(tmp_path, name="work") -> Paths:
    root = tmp_path / name
    paths = Paths(
        store=str(tmp_path / "store"),
        cleaned=str(root / "cleaned.parquet"),
        validated=str(root / "validated.parquet"),
        reports=str(root / "reports"),
        cache=str(root / "cache"),
    )
    root.mkdir(parents=True)
    return paths


def write_cleaned(paths: Paths, generated, labels: dict[int, int]) -> list[str]:
    """The cleaned manifest of picture i labelled labels[i], in the order given; their image ids."""
    pictures, _ = generated
    rows = []
    for i, label in labels.items():
        image_id = store_image(paths.store, pictures[i])
        rows.append(cleaned_row(image_id, i, label, 16, 100))
    pd.DataFrame(rows).to_parquet(paths.cleaned, index=False)
    return [r["image_id"] for r in rows]


def params(**suspect) -> validate.Params:
    return validate.Params(suspect_label={"model": "kernel", "folds": FOLDS, **suspect})


def true_labels(generated, indices) -> dict[int, int]:
    return {int(i): int(generated[1][i]) for i in indices}


def flip(labels: dict[int, int], indices) -> dict[int, int]:
    return {**labels, **{int(i): (labels[int(i)] + 2) % CLASSES for i in indices}}


def last_fit(paths: Paths) -> suspect_cache.LastFit:
    entries = list((suspect_cache.Path(paths.cache) / suspect_cache.FOLDER).glob("*.npz"))
    assert len(entries) == 1
    fit = suspect_cache.load(paths.cache, entries[0].stem)
    assert fit is not None and fit.models_dir.is_dir()
    return fit


def summary(paths: Paths) -> str:
    return (paths.report_dir("validate") / "summary.md").read_text()


def suspects(paths: Paths) -> set[str]:
    out = pd.read_parquet(paths.validated)
    return set(out.loc[out["suspect_label"], "image_id"])


def test_small_growth_scores_only_the_new_images_and_finds_a_new_flip(tmp_path, generated):
    paths = workspace(tmp_path)
    old = true_labels(generated, range(300))
    write_cleaned(paths, generated, old)
    validate.run(params(max_given_probability=0.3), paths)  # tiny data: a softer model (test_validate)
    fitted = last_fit(paths)
    assert "fitted the 5 fold models on 300 images (no usable earlier fit)" in summary(paths)

    # a new, unmistakable square labelled "cross" (a single flip among clean images is flagged only
    # if the model is surer of its true class than of that class's average member)
    planted = 302
    pictures = generated[0].copy()
    pictures[planted] = picture(2, np.random.default_rng(1), noise=2)
    grown = flip({**old, **true_labels(generated, range(300, 320))}, [planted])
    ids = write_cleaned(paths, (pictures, generated[1]), grown)
    validate.run(params(max_given_probability=0.3), paths)
    assert "scored 20 new images with the 5 fold models of the last fit (300 images); refit above 10% new" in (
        summary(paths)
    )
    after = last_fit(paths)
    assert after.token == fitted.token  # the same fold models (the retrained round's): nothing fitted again
    assert after.fitted.sum() == 300 and len(after.image_ids) == 320
    np.testing.assert_array_equal(after.probs[:300], fitted.probs)  # the old images keep their scores
    assert ids[list(grown).index(planted)] in suspects(paths)

    # the same data again: scores reused, nothing decoded or fitted, the contact sheet not redrawn
    before = pd.read_parquet(paths.validated)
    sheet = paths.report_dir("validate") / "flagged.png"
    drawn_at = sheet.stat().st_mtime_ns
    validate.run(params(max_given_probability=0.3), paths)
    assert "suspect-label scores reused" in summary(paths)
    assert last_fit(paths).token == fitted.token
    pd.testing.assert_frame_equal(pd.read_parquet(paths.validated), before)
    assert sheet.stat().st_mtime_ns == drawn_at


def test_growth_past_refit_growth_fits_again_counting_earlier_new_images(tmp_path, generated):
    paths = workspace(tmp_path)
    write_cleaned(paths, generated, true_labels(generated, range(200)))
    validate.run(params(retrain=False), paths)
    first = last_fit(paths).token

    write_cleaned(paths, generated, true_labels(generated, range(215)))  # +15: 7.5 %
    validate.run(params(retrain=False), paths)
    assert "scored 15 new images" in summary(paths) and last_fit(paths).token == first

    write_cleaned(paths, generated, true_labels(generated, range(230)))  # 30 new since the fit: 15 %
    validate.run(params(retrain=False), paths)
    assert "on 230 images (30 images new since the last fit (200 images) is more than refit_growth 10%)" in (
        summary(paths)
    )
    refitted = last_fit(paths)
    assert refitted.token != first and refitted.fitted.all() and len(refitted.image_ids) == 230


def test_relabelled_fitted_image_or_new_class_fits_again(tmp_path, generated):
    paths = workspace(tmp_path)
    truth = generated[1]
    labels = true_labels(generated, [i for i in range(250) if truth[i] != CLASSES - 1])
    write_cleaned(paths, generated, labels)
    validate.run(params(retrain=False), paths)
    first = last_fit(paths).token

    relabelled = {**labels, 0: 1}
    write_cleaned(paths, generated, relabelled)
    validate.run(params(retrain=False), paths)
    assert "(1 image(s) the last fit learned from have another label now)" in summary(paths)
    second = last_fit(paths).token
    assert second != first

    # a few images of a class the fit never saw (enough to be scored): fitted again
    newcomers = np.flatnonzero(truth == CLASSES - 1)[:12]
    write_cleaned(paths, generated, {**relabelled, **true_labels(generated, newcomers)})
    validate.run(params(retrain=False), paths)
    assert "(the classes differ from the last fit's (new '4'))" in summary(paths)
    assert last_fit(paths).token != second


def test_reuse_agrees_with_a_cold_run_on_the_same_data(tmp_path, generated):
    """3 % flips in 300 old images and 2 in 20 new ones. Measured: the reuse path flagged 6 images, a
    cold run on the same 320 images 8, the 6 among them, all of them planted flips: the two differ on
    2 of 320 images. (At 400 + 30 images: 9 and 13, the 9 among the 13.)"""
    rng = np.random.default_rng(3)
    old_flips = rng.choice(300, 9, replace=False)
    final = flip(true_labels(generated, range(320)), [*old_flips, 305, 310])
    incremental = workspace(tmp_path, "incremental")
    write_cleaned(incremental, generated, {i: final[i] for i in range(300)})
    validate.run(params(max_given_probability=0.3), incremental)
    ids = write_cleaned(incremental, generated, final)
    validate.run(params(max_given_probability=0.3), incremental)
    assert "scored 20 new images" in summary(incremental)

    cold = workspace(tmp_path, "cold")
    write_cleaned(cold, generated, final)
    validate.run(params(max_given_probability=0.3), cold)
    assert "no usable earlier fit" in summary(cold)

    reused, fresh = suspects(incremental), suspects(cold)
    planted = {ids[i] for i in [*old_flips, 305, 310]}
    assert len(reused ^ fresh) <= 0.01 * len(final)  # flagged or not: the same on 99 % of the images
    assert len(reused & fresh) >= 0.7 * len(reused | fresh)  # most flags shared
    assert len(reused & planted) >= 0.9 * len(reused) and len(fresh & planted) >= 0.9 * len(fresh)


def test_refit_growth_zero_fits_on_any_change_and_reuses_unchanged_data(tmp_path, generated):
    paths = workspace(tmp_path)
    write_cleaned(paths, generated, true_labels(generated, range(150)))
    validate.run(params(refit_growth=0, retrain=False), paths)
    first = last_fit(paths).token

    validate.run(params(refit_growth=0, retrain=False), paths)
    assert "suspect-label scores reused" in summary(paths) and last_fit(paths).token == first

    write_cleaned(paths, generated, true_labels(generated, range(152)))  # +1 %
    validate.run(params(refit_growth=0, retrain=False), paths)
    assert "fitted the 5 fold models on 152 images (the images changed and refit_growth is 0)" in summary(paths)
    assert last_fit(paths).token != first


def test_above_the_projection_sample_new_images_are_scored_through_the_kept_projection(
    tmp_path, generated, monkeypatch
):
    # a large set (here: above a lowered PROJECTION_SAMPLE) keeps projected kernel features; the kept
    # fold models must take the full features of images that arrive later
    monkeypatch.setattr(validate, "PROJECTION_SAMPLE", 150)
    paths = workspace(tmp_path)
    old = true_labels(generated, range(400))
    write_cleaned(paths, generated, flip(old, [3, 17]))
    validate.run(params(max_given_probability=0.3), paths)
    out = pd.read_parquet(paths.validated)
    assert out["suspect_label"].iloc[[3, 17]].all()  # the flips are still found
    fitted = last_fit(paths)
    kept = suspect_cache.load_fold_models(fitted, ["kernel"])
    assert [fold[0].steps[0][0] for fold in kept] == ["projection"] * FOLDS

    write_cleaned(paths, generated, {**flip(old, [3, 17]), **true_labels(generated, range(400, 420))})
    validate.run(params(max_given_probability=0.3), paths)
    assert "scored 20 new images with the 5 fold models" in summary(paths)
    after = last_fit(paths)
    new_probs = after.probs[400:]
    assert (new_probs.argmax(axis=1) == generated[1][400:420]).mean() >= 0.9


def register_champion(tmp_path, classes: list[str], name: str = "imgcls") -> object:
    """A real imgcls pyfunc (resnet_tiny, random weights, 16 px grey) registered as `name` with the
    champion alias in the tracking store; its Predictor."""
    import mlflow
    import torch

    from models.networks import build_network
    from models.predictor import load_predictor, save_model_files
    from models.pyfunc import log_pyfunc

    torch.manual_seed(0)
    network = build_network("resnet_tiny", len(classes), 1)
    stats = {"image_size": 16, "channels": 1, "mean": [0.3], "std": [0.3]}
    files = save_model_files(tmp_path / "champion_files", "resnet_tiny", network, classes, stats)
    with mlflow.start_run():
        info = log_pyfunc(files, np.zeros((16, 16, 1), np.uint8))
    version = mlflow.register_model(info.model_uri, name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return load_predictor(tmp_path / "champion_files")


def test_new_images_are_also_scored_by_a_champion_that_knows_their_classes(tmp_path, generated, tracking):
    """Two workspaces on the same images: without a champion, and with one registered. The new images'
    scores are the mean of the fold models' and the champion's; the images the fit learned keep theirs.
    A champion that lacks one of the classes is not used, and says so."""
    plain, with_champion = workspace(tmp_path, "plain"), workspace(tmp_path, "champion")
    old = true_labels(generated, range(300))
    grown = {**old, **true_labels(generated, range(300, 320))}
    for paths in (plain, with_champion):
        write_cleaned(paths, generated, old)
        validate.run(params(), paths)
    ids = write_cleaned(plain, generated, grown)
    write_cleaned(with_champion, generated, grown)

    validate.run(params(), plain)  # nothing registered yet: the fold models alone, nothing said about it
    assert "(300 images); refit above 10% new" in summary(plain) and "champion" not in summary(plain)
    predictor = register_champion(tmp_path, [str(c) for c in range(CLASSES)])
    validate.run(params(), with_champion)
    assert "(300 images); the new ones also by champion imgcls v1 (averaged); refit" in summary(with_champion)

    from tasks.common.store import ImageStore

    fold_only, averaged = last_fit(plain), last_fit(with_champion)
    np.testing.assert_array_equal(averaged.probs[:300], fold_only.probs[:300])
    pictures = np.stack([np.asarray(Image.open(ImageStore(plain.store).path(i))) for i in ids[300:]])[..., None]
    champion = predictor.predict_proba(pictures)
    np.testing.assert_allclose(averaged.probs[300:], (fold_only.probs[300:] + champion) / 2, atol=1e-5)

    # a champion of other classes: not used, in one line
    register_champion(tmp_path, ["a", "b"], name="other")
    other = workspace(tmp_path, "other")
    write_cleaned(other, generated, old)
    validate.run(params(champion="other"), other)
    write_cleaned(other, generated, grown)
    validate.run(params(champion="other"), other)
    assert "champion not used: other v1 does not know '0', '1', '2', '3', '4'" in summary(other)
    np.testing.assert_array_equal(last_fit(other).probs, fold_only.probs)
