"""Ensembles as promotable models: weight fitting on synthetic probabilities, and an ensemble of two
tiny trained members (`imgcls ensemble --seeds 2`'s code path) saved as ONE pyfunc that MLflow, evaluate
and promote treat like any model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.ensemble import EnsemblePredictor, fit_weights, load_ensemble, log_loss, save_ensemble
from models.networks import build_network
from models.predictor import Predictor, load_predictor, save_model_files
from tasks.common.errors import UserError
from tasks.common.prepared import read_prepared
from tasks.judging.ensemble import build, choose_weights
from tests.helpers.brightness_models import write_split
from tests.helpers.prepared_store import make_project

FAST = dict(
    network="resnet_tiny",
    epochs=1,
    batch_size=8,
    lr=0.01,
    num_workers=0,
    limit_train_batches=3,
    early_stopping_patience=None,
    accelerator="cpu",
)
STATS = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.25]}


def _synthetic(seed: int = 0, n: int = 400, classes: int = 3):
    """Labels and three members: a good one (p(true) ~0.8), a noisy one (~0.45) and a uniform one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)

    def member(p_true: float, noise: float) -> np.ndarray:
        logits = rng.normal(0, noise, (n, classes))
        logits[np.arange(n), y] += np.log(p_true * (classes - 1) / (1 - p_true))
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return y, np.stack([member(0.8, 1.0), member(0.45, 1.5), np.full((n, classes), 1 / classes)])


def test_fit_weights_favours_the_better_member_and_lowers_the_loss():
    y, proba = _synthetic()
    w = fit_weights(proba, y)
    assert w.shape == (3,) and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert w[0] > w[1] >= w[2] and w[0] > 0.5
    pooled = np.tensordot(w, proba, axes=1)
    equal = proba.mean(0)
    assert log_loss(pooled, y) < log_loss(equal, y)
    assert log_loss(pooled, y) <= min(log_loss(p, y) for p in proba) + 1e-9
    # swapping the members swaps the weights: nothing depends on the order
    assert fit_weights(proba[::-1], y) == pytest.approx(w[::-1], abs=1e-3)
    # one member, or nothing to fit on: equal weights
    assert fit_weights(proba[:1], y).tolist() == [1.0]
    assert fit_weights(proba[:, :0], y[:0]).tolist() == pytest.approx([1 / 3] * 3)


def _near_perfect(errors: list[int], n: int = 188, classes: int = 10, seed: int = 0):
    """Labels and members that are right on all but errors[i] images, each giving its answer
    probability 0.9, except a perfect member, which is near-certain (0.999): the val split of digits,
    where the members chose checkpoints and temperatures on val and one of them is perfect there."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    members = []
    for wrong in errors:
        answer = y.copy()
        picked = rng.choice(n, wrong, replace=False)
        answer[picked] = (y[picked] + 1) % classes
        sure = 0.999 if wrong == 0 else 0.9
        p = np.full((n, classes), (1 - sure) / (classes - 1))
        p[np.arange(n), answer] = sure
        members.append(p)
    return y, np.stack(members)


def test_auto_weights_stay_equal_when_val_cannot_tell_the_members_apart():
    # one member perfect on val, the others one wrong image each: the log-loss fit collapses onto
    # the perfect one; McNemar p = 1, so auto keeps equal weights
    y, proba = _near_perfect([1, 0, 1])
    fitted = fit_weights(proba, y)
    assert fitted[1] > 0.9
    weights, how = choose_weights(proba, y, "auto")
    assert how == "equal" and weights.tolist() == pytest.approx([1 / 3] * 3)
    assert choose_weights(proba, y, "fitted")[0] == pytest.approx(fitted)
    # a member clearly worse on val (30 more wrong images of 188): auto fits
    y, proba = _near_perfect([0, 30, 1])
    weights, how = choose_weights(proba, y, "auto")
    assert how == "fitted" and weights == pytest.approx(fit_weights(proba, y)) and weights[1] < 0.05
    assert choose_weights(proba, y, "equal")[1] == "equal"
    assert choose_weights(proba[:1], y, "auto") == (pytest.approx([1.0]), "equal")
    with pytest.raises(UserError, match="weighting must be one of"):
        choose_weights(proba, y, "best")


def _member(classes: list[str], seed: int, size: int = 16) -> Predictor:
    import torch

    torch.manual_seed(seed)
    return Predictor(build_network("resnet_tiny", len(classes), 1), classes, STATS | {"image_size": size})


def test_members_must_agree_on_classes_and_input_size(tmp_path):
    a, b = _member(["cat", "dog"], 0), _member(["dog", "cat"], 1)
    with pytest.raises(UserError) as err:
        EnsemblePredictor([a, b], [0.5, 0.5])
    assert "classes" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="takes 16x16x1 images but m0 takes 24x24x1"):
        EnsemblePredictor([_member(["cat", "dog"], 0, 24), _member(["cat", "dog"], 1)], [1, 1])
    with pytest.raises(UserError, match="not all 0"):
        EnsemblePredictor([a, a], [0, 0])
    # saving checks the same, before writing anything
    dirs = []
    for i, m in enumerate((a, b)):
        save_model_files(tmp_path / f"s{i}", "resnet_tiny", m.network, m.classes, m.stats)
        dirs.append(tmp_path / f"s{i}")
    with pytest.raises(UserError, match="classes"):
        save_ensemble(tmp_path / "ens", dirs, [1, 1])
    assert not (tmp_path / "ens").exists()


def test_ensemble_predicts_the_weighted_mean_and_round_trips(tmp_path):
    a, b = _member(["cat", "dog", "owl"], 0), _member(["cat", "dog", "owl"], 1)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    ens = EnsemblePredictor([a, b], [3, 1])
    assert ens.weights.tolist() == [0.75, 0.25] and ens.classes == ["cat", "dog", "owl"]
    expected = 0.75 * a.predict_proba(images) + 0.25 * b.predict_proba(images)
    np.testing.assert_allclose(ens.predict_proba(images), expected, atol=1e-6)
    assert ens.logits(images).shape == (1, 5, 3)
    with pytest.raises(UserError, match="ONNX export handles single models only"):
        ens.network  # noqa: B018 -- what flows/export.py reaches for
    dirs = []
    for i, m in enumerate((a, b)):
        save_model_files(tmp_path / f"s{i}", "resnet_tiny", m.network, m.classes, m.stats)
        dirs.append(tmp_path / f"s{i}")
    folder = save_ensemble(tmp_path / "ens", dirs, [3, 1])
    again = load_predictor(folder)
    assert isinstance(again, EnsemblePredictor)
    np.testing.assert_allclose(again.predict_proba(images), expected, atol=1e-6)
    # a weights.json naming a folder outside the ensemble is refused, not followed
    spec = json.loads((folder / "weights.json").read_text())
    (folder / "weights.json").write_text(json.dumps(spec | {"members": ["m0", "../s1"]}))
    with pytest.raises(UserError, match="not a model folder beside it"):
        load_ensemble(folder)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`imgcls ensemble --seeds 2` on a tiny project: two resnet_tiny members, one ensemble run."""
    from tasks.train import Params as TrainParams

    root = tmp_path_factory.mktemp("ensemble")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        paths = make_project(root).model_copy(update={"store": str(root / "store"), "cache": str(root / "cache")})
        result = build(TrainParams(**FAST), paths, seeds=2)
        yield paths, result


def test_seeds_make_one_ensemble_run_and_run_json(made):
    paths, result = made
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.tags["imgcls.kind"] == "ensemble"
    members = json.loads(run.data.tags["imgcls.ensemble.members"])
    assert members == result["members"] and len(members) == 2 and result["run_id"] not in members
    weights = json.loads(run.data.tags["imgcls.ensemble.weights"])
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and min(weights) >= 0
    assert run.data.metrics["ensemble/latency_p50_ms"] > 0 and run.data.metrics["ensemble/members"] == 2
    assert run.data.params["ensemble.weighting"] == "auto"
    assert run.data.metrics["ensemble/weights_fitted"] in (0.0, 1.0)
    if run.data.metrics["ensemble/weights_fitted"] == 0.0:
        assert weights == pytest.approx([0.5, 0.5], abs=1e-6)
    assert run.data.tags["imgcls.registered"] == "false"
    for member in members:  # member runs say why they are not registered
        assert result["run_id"] in client.get_run(member).data.tags["imgcls.not_registered_reason"]
    info = json.loads((Path(paths.train_dir) / "run.json").read_text())
    assert info["run_id"] == result["run_id"] and info["model_uri"].startswith("models:/m-")


def test_pyfunc_predicts_like_the_ensemble_predictor(made, tmp_path):
    paths, result = made
    predictor = load_predictor(paths.train_dir)
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2
    store = read_prepared(paths.prepared)
    test = store.split("test")
    images = np.asarray(store.images[test["row"].to_numpy()])
    expected = predictor.predict_proba(images)
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img[:, :, 0]).save(files[-1])
    model = mlflow.pyfunc.load_model(result["model_uri"])
    assert model.unwrap_python_model().class_names() == store.classes
    out = model.predict(pd.DataFrame({"image": [str(f) for f in files]}))
    assert out["error"].eq("").all()
    assert out["label"].tolist() == [store.classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(out["score"].to_numpy(), expected.max(1), atol=1e-5)
    # the saved copy in train_dir/model is the same model
    local = mlflow.pyfunc.load_model(str(Path(paths.train_dir) / "model"))
    assert local.predict(pd.DataFrame({"image": [str(files[0])]}))["label"][0] == out["label"][0]


def test_evaluate_and_promote_judge_the_ensemble(made):
    from tasks.evaluate import Params as EvalParams
    from tasks.evaluate import run as evaluate
    from tasks.promote import Params as PromoteParams
    from tasks.promote import run as promote

    paths, result = made
    evaluated = evaluate(EvalParams(baseline={"enabled": False}, gallery_size=4), paths)
    assert evaluated["run_id"] == result["run_id"]
    metrics = json.loads((Path(paths.reports) / "evaluate" / "metrics.json").read_text())
    assert 0 <= metrics["test/acc"] <= 1 and metrics["ensemble/latency_p50_ms"] > 0
    assert metrics["ensemble/member_latency_p50_ms"] > 0
    # promote scores the registered ensemble through its pyfunc on a split manifest of image files
    promote_paths = paths.model_copy(update={"split": str(Path(paths.store).parent / "promote_split.parquet")})
    write_split(promote_paths, {"dark": 6, "mid": 6, "bright": 6})
    decided = promote(PromoteParams(floor=0.0, score_batch_size=8, max_latency_ms=60_000), promote_paths)
    assert decided["candidate_version"] == "1" and decided["decision"] in ("promoted", "rejected")
    decision = json.loads((Path(paths.reports) / "promote" / "decision.json").read_text())
    assert decision["candidate"]["metrics"]["test/latency_p50_ms"] > 0


def test_runs_reuse_finished_members_and_refuse_bad_input(made):
    from tasks.train import Params as TrainParams

    paths, result = made
    other = paths.model_copy(update={"train_dir": str(Path(paths.train_dir).parent / "train_runs")})
    again = build(TrainParams(**FAST), other, runs=result["members"])
    assert again["members"] == result["members"] and again["run_id"] != result["run_id"]
    assert json.loads((Path(other.train_dir) / "run.json").read_text())["run_id"] == again["run_id"]
    with pytest.raises(UserError, match="either --seeds N or --runs"):
        build(TrainParams(**FAST), other)
    with pytest.raises(UserError, match="same run twice"):
        build(TrainParams(**FAST), other, runs=[result["members"][0]] * 2)
    with pytest.raises(UserError, match="must be single models"):
        build(TrainParams(**FAST), other, runs=[result["run_id"], result["members"][0]])


def test_cli_refuses_a_bad_member_count_in_one_line(capsys):
    from flows.cli import main

    assert main(["ensemble", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1, got 0"
    with pytest.raises(SystemExit):  # argparse: --seeds and --runs exclude each other
        main(["ensemble", "--seeds", "2", "--runs", "abc"])


def test_the_hog_baseline_joins_as_a_member_shipped_as_arrays(made, tmp_path):
    """`imgcls ensemble --runs ... --baseline`: the HOG + linear baseline is the last member, saved as
    JSON + safetensors inside the ONE pyfunc, which predicts like the in-process ensemble."""
    from models.hog import HogLinearPredictor
    from tasks.judging.baseline import BaselineParams
    from tasks.train import Params as TrainParams

    paths, result = made
    other = paths.model_copy(update={"train_dir": str(Path(paths.train_dir).parent / "train_hog")})
    made_hog = build(TrainParams(**FAST), other, runs=result["members"], baseline=BaselineParams(image_size=16))
    assert made_hog["members"] == [*result["members"], "baseline:hog_svm"] and len(made_hog["weights"]) == 3
    run = mlflow.MlflowClient().get_run(made_hog["run_id"])
    assert json.loads(run.data.tags["imgcls.ensemble.members"]) == result["members"]  # MLflow runs only
    assert run.data.params["ensemble.baseline_member"] == "hog_svm" and run.data.metrics["ensemble/members"] == 3
    predictor = load_predictor(other.train_dir)
    assert isinstance(predictor.members[-1], HogLinearPredictor)
    saved = Path(other.train_dir) / "model" / "artifacts" / "ensemble" / "m2"
    assert sorted(p.name for p in saved.iterdir()) == ["hog.json", "linear.safetensors"]
    store = read_prepared(paths.prepared)
    images = np.asarray(store.images[store.split("test")["row"].to_numpy()])
    expected = predictor.predict_proba(images)
    pooled = np.tensordot(predictor.weights, predictor.member_proba(images), axes=1)
    np.testing.assert_allclose(expected, pooled, atol=1e-6)
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(img[:, :, 0]).save(files[-1])
    out = mlflow.pyfunc.load_model(made_hog["model_uri"]).predict(pd.DataFrame({"image": [str(f) for f in files]}))
    assert out["error"].eq("").all()
    np.testing.assert_allclose(out["score"].to_numpy(), expected.max(1), atol=1e-5)
    with pytest.raises(UserError, match="knn baseline can't be an ensemble member"):
        build(TrainParams(**FAST), other, runs=result["members"], baseline=BaselineParams(kind="knn"))


def test_cli_baseline_flag_reads_evaluate_baseline_and_refuses_knn_before_training(tmp_path, capsys):
    """`imgcls ensemble --seeds 1 --baseline` takes the member's settings from the params file's
    evaluate.baseline: a knn there is one error line before any member trains (no train dir appears)."""
    import yaml

    from flows.cli import main

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())  # cwd may be a fixture's
    data["evaluate"]["baseline"]["kind"] = "knn"
    data["paths"] = {k: str(tmp_path / v) for k, v in data["paths"].items()}  # nothing written in the repo
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    assert main(["ensemble", "--seeds", "1", "--baseline", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a knn baseline can't be an ensemble member") and "\n" not in err
    assert not (tmp_path / "artifacts").exists()
