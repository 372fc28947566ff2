import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from models.hog import hog_features
from tasks.common.prepared import read_prepared
from tasks.judging.baseline import BaselineParams, run_baseline
from tests.helpers.prepared_store import STRIPE_CLASSES as CLASSES
from tests.helpers.prepared_store import make_prepared_store, stripes


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One sqlite store for the module: creating its schema costs seconds on these CPUs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


def test_hog_features_tell_stripe_orientations_apart():
    rng = np.random.default_rng(0)
    batch = np.stack([stripes(kind, 16, rng) for kind in (0, 0, 1)])
    feats = hog_features(batch, cells=4, orientations=9)
    assert feats.shape == (3, 3 * 3 * 4 * 9) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all()
    same = np.linalg.norm(feats[0] - feats[1])
    other = np.linalg.norm(feats[0] - feats[2])
    assert same < other / 2
    # each block is L2-Hys normalized: unit length (or zero for a flat block)
    norms = np.linalg.norm(feats.reshape(3, 9, 36), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)


def test_flat_image_gives_zero_features_not_nan():
    feats = hog_features(np.full((1, 16, 16), 128, np.uint8), cells=4, orientations=9)
    assert np.isfinite(feats).all() and not feats.any()


@pytest.mark.parametrize("kind", ["hog_svm", "logreg", "knn"])
def test_baseline_learns_separable_task_and_logs_its_own_run(tmp_path, tracking, kind):
    store = read_prepared(make_prepared_store(tmp_path / "prepared", channels=3, size=20))
    params = BaselineParams(kind=kind, image_size=16)
    result = run_baseline(params, store, splits=["val", "test"], dataset_version="v-test", top_k=2, bins=5)

    assert result["metrics"]["test/acc"] >= 0.9
    assert result["metrics"]["val/macro_f1"] >= 0.9
    assert ("test/log_loss" in result["metrics"]) == (kind != "hog_svm")  # LinearSVC has no probabilities
    run = MlflowClient(tracking).get_run(result["run_id"])
    assert run.data.tags["stage"] == "baseline"
    assert run.data.tags["dataset_version"] == "v-test"
    assert run.data.tags["git_commit"]
    assert run.data.metrics["test/acc"] == pytest.approx(result["metrics"]["test/acc"])
    assert run.data.params["kind"] == kind
    model = mlflow.sklearn.load_model(f"runs:/{result['run_id']}/model")
    assert set(model.classes_) == set(range(len(CLASSES)))


def test_baseline_needs_two_classes_in_train(tmp_path, tracking):
    from tasks.common.errors import UserError

    store = read_prepared(make_prepared_store(tmp_path / "prepared"))
    one_class = store.index.assign(split=np.where(store.index["label_idx"] == 0, "train", "test"))
    with pytest.raises(UserError, match="at least two classes"):
        run_baseline(
            BaselineParams(),
            type(store)(store.images, one_class, store.classes),
            splits=["test"],
            dataset_version="v",
            top_k=1,
            bins=5,
        )


@pytest.mark.parametrize("kind,classes", [("hog_svm", 3), ("logreg", 3), ("hog_svm", 2), ("logreg", 2)])
def test_linear_arrays_give_the_classifiers_own_decisions(kind, classes):
    """The arrays a HOG member ships reproduce the fitted scikit-learn model: its decision values for
    3 classes (a scaler folded in for logreg), the same sigmoid for a two-class model, and a class the
    train split lacks never wins."""
    from tasks.judging.baseline import linear_arrays, make_classifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 12)) * rng.uniform(0.5, 3, 12) + rng.normal(size=12)
    y = np.arange(90) % classes
    x[np.arange(90), y] += 2.0
    model = make_classifier(kind).fit(x, y)
    coef, intercept = linear_arrays(model, classes + 1)  # one more class than train has
    z = x @ coef.T + intercept
    assert z.shape == (90, classes + 1) and (z.argmax(1) == model.predict(x)).all()
    if classes == 3:
        np.testing.assert_allclose(z[:, :3], model.decision_function(x), rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(z[:, 1] - z[:, 0], model.decision_function(x), rtol=1e-6, atol=1e-6)
    if kind == "logreg":  # its probabilities are the softmax of these decision values
        e = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose((e / e.sum(1, keepdims=True))[:, :classes], model.predict_proba(x), atol=1e-6)


def test_hog_member_is_a_calibrated_classifier_saved_as_arrays(tmp_path):
    from models.hog import HOG_MODEL_FILES, HogLinearPredictor, load_hog_linear
    from tasks.common.errors import UserError
    from tasks.judging.baseline import fit_hog_member

    store = read_prepared(make_prepared_store(tmp_path / "prepared", per_split={"train": 16, "val": 8, "test": 8}))
    folder = fit_hog_member(BaselineParams(image_size=16), store, tmp_path / "hog")
    assert sorted(p.name for p in folder.iterdir()) == sorted(HOG_MODEL_FILES)  # arrays + JSON: nothing pickled
    member = load_hog_linear(folder)
    assert isinstance(member, HogLinearPredictor) and member.classes == store.classes
    assert (member.image_size, member.channels) == (16, 1)
    assert member.temperature != 1.0  # fitted on val: LinearSVC's margins are no probabilities
    test = store.split("test")
    proba = member.predict_proba(np.asarray(store.images[test["row"].to_numpy()]))
    assert proba.shape == (len(test), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba.argmax(1) == test["label_idx"].to_numpy()).mean() >= 0.9
    with pytest.raises(UserError, match="only hog_svm and logreg are linear"):
        fit_hog_member(BaselineParams(kind="knn", image_size=16), store, tmp_path / "knn")
    # a file that does not fit its own spec is one clear error
    from safetensors.numpy import save_file

    save_file(
        {"coef": np.zeros((3, 5), np.float32), "intercept": np.zeros(3, np.float32)}, str(folder / HOG_MODEL_FILES[1])
    )
    with pytest.raises(UserError, match=r"do not fit 3 classes x 324 HOG features"):
        load_hog_linear(folder)
    assert member.predict_proba(np.zeros((0, 16, 16, 1), np.uint8)).shape == (0, 3)
    # broken files and specs: one line each, never a traceback from numpy or safetensors
    import json

    good_spec = json.loads((folder / "hog.json").read_text())
    broken = {
        "temperature": good_spec | {"stats": good_spec["stats"] | {"temperature": "hot"}},
        "cells": good_spec | {"hog": good_spec["hog"] | {"cells": 0}},
        "kind": good_spec | {"kind": "pickle"},
    }
    for name, spec in broken.items():
        (folder / "hog.json").write_text(json.dumps(spec))
        with pytest.raises(UserError) as err:
            load_hog_linear(folder)
        assert "\n" not in str(err.value) and str(folder) in str(err.value), name
    (folder / "hog.json").write_text(json.dumps(good_spec))
    (folder / HOG_MODEL_FILES[1]).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable HOG"):
        load_hog_linear(folder)
