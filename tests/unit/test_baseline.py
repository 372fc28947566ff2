import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tasks.common.prepared import read_prepared
from tasks.judging.baseline import BaselineParams, hog_features, run_baseline
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
