"""Make an ensemble the candidate model (`imgcls ensemble`): members trained by the train stage with
seeds 0..N-1 (each into <train_dir>/members/seed<i>/) or taken from finished MLflow runs, weights chosen
on the val split of the prepared store (choose_weights: fitted, or equal when val cannot tell the
members apart), ONE MLflow run (tag
imgcls.kind=ensemble) logging the ensemble pyfunc, and <train_dir>/run.json + <train_dir>/model/ written
as train writes them, so evaluate and promote treat the ensemble as the candidate like any trained model.

With `baseline`, evaluate's HOG baseline (hog_svm or logreg, params evaluate.baseline) joins as one more
member: fitted here on the train split, its temperature on val, shipped as arrays (models/hog.py). It
errs on other images than the CNNs do (digits: it fixes the one test image the 4-seed CNN ensemble
gets wrong and 3 of 4 members share). Member runs are left unregistered, each tagged with the ensemble
run that uses it."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from tasks.common import run_records, tracking
from tasks.common.atomic import atomic_dir
from tasks.common.errors import UserError
from tasks.common.params import Paths
from tasks.common.prepared import read_prepared
from tasks.common.versioning import dataset_version, git_commit
from tasks.judging.latency import latency_metrics

log = logging.getLogger(__name__)
KIND_TAG = "imgcls.kind"
MEMBERS_TAG = "imgcls.ensemble.members"  # JSON list of the member run ids
WEIGHTS_TAG = "imgcls.ensemble.weights"  # JSON list, same order
WEIGHTINGS = ("auto", "fitted", "equal")  # how the weights are chosen (choose_weights)
SEPARATED_P = 0.05  # auto fits the weights only when val separates the members at this McNemar p
MEMBERS_DIR = "members"
MODEL_FILES = ("weights.safetensors", "stats.json", "classes.json", "network.json")


def model_folder(model_dir: str | Path) -> Path:
    """The folder holding the four model files: the directory itself, a pyfunc's artifacts/, or a
    train_dir's model/artifacts/."""
    path = Path(model_dir)
    for folder in (path, path / "artifacts", path / "model" / "artifacts"):
        if all((folder / f).is_file() for f in MODEL_FILES):
            return folder
    if any(
        (f / "weights.json").is_file()
        for f in (path / "artifacts" / "ensemble", path / "model" / "artifacts" / "ensemble")
    ):
        raise UserError(f"{path} holds an ensemble: an ensemble's members must be single models")
    raise UserError(f"{path}: not a saved model (no {', '.join(MODEL_FILES)})")


def split_scores(member_proba: np.ndarray, weights: np.ndarray, y: np.ndarray, split: str) -> dict[str, float]:
    """acc and log loss of each member (m0, m1, ...) and of the pooled ensemble on one split."""
    from models.ensemble import log_loss

    out = {}
    pooled = np.tensordot(weights, member_proba, axes=1)
    for name, p in [*((f"m{i}", p) for i, p in enumerate(member_proba)), ("ensemble", pooled)]:
        out[f"{split}/{name}/acc"] = float((p.argmax(1) == y).mean())
        out[f"{split}/{name}/log_loss"] = log_loss(p, y)
    return out


def choose_weights(member_proba: np.ndarray, y: np.ndarray, weighting: str = "auto") -> tuple[np.ndarray, str]:
    """(weights, "fitted" | "equal"). fitted: models.ensemble.fit_weights on val. equal: 1/members.
    auto: fitted only when val tells the members apart, i.e. its most accurate member is better than
    at least one other by the exact McNemar test (p < SEPARATED_P); else equal. Why: the members chose
    their checkpoints and temperatures on this same val split, so one of them is often perfect on it
    by chance, and the log-loss fit then puts all the weight on that one member (digits, 188 val
    images: weights [0, 1, 0] scored 0.9886 on test where equal weights scored 0.9943)."""
    from models.ensemble import fit_weights
    from tasks.judging.gates import mcnemar_exact

    if weighting not in WEIGHTINGS:
        raise UserError(f"ensemble weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    members = len(member_proba)
    equal = np.full(members, 1.0 / members)
    if weighting == "equal" or members == 1:
        return equal, "equal"
    if weighting == "auto":
        correct = np.asarray(member_proba).argmax(axis=2) == np.asarray(y)[None, :]
        best = int(correct.sum(axis=1).argmax())
        separated = any(mcnemar_exact(correct[best], correct[k])[2] < SEPARATED_P for k in range(members) if k != best)
        if not separated:
            return equal, "equal"
    return fit_weights(member_proba, y), "fitted"


def fit(member_dirs: list[Path], prepared: str | Path, weighting: str = "auto"):
    """The ensemble of these model folders with weights chosen on the val split (choose_weights);
    (predictor, metrics)."""
    from models.ensemble import EnsemblePredictor, load_member

    store = read_prepared(prepared)
    members = [load_member(d) for d in member_dirs]
    probe = EnsemblePredictor(members, np.ones(len(members)))  # checks classes / input size agree
    if probe.classes != store.classes:
        raise UserError(f"the ensemble members know classes {probe.classes} but {prepared} has {store.classes}")
    frame = store.split("val")
    if frame.empty:
        raise UserError(f"the val split of {prepared} has no images: ensemble weights are fitted on it")
    y = frame["label_idx"].to_numpy()
    proba = probe.member_proba(np.asarray(store.images[frame["row"].to_numpy()]))
    weights, chosen = choose_weights(proba, y, weighting)
    ensemble = EnsemblePredictor(members, weights)
    metrics = split_scores(proba, ensemble.weights, y, "val")
    metrics["ensemble/weights_fitted"] = float(chosen == "fitted")
    metrics |= latency_metrics(ensemble, np.asarray(store.images[int(frame["row"].iloc[0])]))
    return ensemble, metrics


def train_members(train_params, paths: Paths, seeds: int) -> list[tuple[str, Path]]:
    """Run the train stage `seeds` times (train.seed = 0..seeds-1), each into <train_dir>/members/seed<i>;
    returns (run id, model folder) per member."""
    from tasks.train import run as train_run

    out = []
    for seed in range(seeds):
        member_dir = Path(paths.train_dir) / MEMBERS_DIR / f"seed{seed}"
        log.info("training ensemble member %d/%d (train.seed=%d) into %s", seed + 1, seeds, seed, member_dir)
        info = train_run(
            train_params.model_copy(update={"seed": seed}), paths.model_copy(update={"train_dir": str(member_dir)})
        )
        if info is None:  # a DDP rank other than zero: only rank zero assembles the ensemble
            continue
        out.append((info["run_id"], model_folder(member_dir)))
    return out


def download_members(run_ids: list[str], target: Path) -> list[tuple[str, Path]]:
    """The model each finished run logged, downloaded under `target`; (run id, model folder) per run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    out = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
            outputs = run.outputs.model_outputs if run.outputs else []
            uri = f"models:/{outputs[0].model_id}" if outputs else f"runs:/{run_id}/model"
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target / run_id))
        except MlflowException as exc:
            raise UserError(f"run {run_id}: no logged model to use as an ensemble member ({exc.message})") from None
        out.append((run_id, model_folder(local)))
    return out


def build(
    train_params,
    paths: Paths,
    *,
    seeds: int | None = None,
    runs: list[str] | None = None,
    weighting: str = "auto",
    baseline=None,
) -> dict:
    """Make the ensemble candidate; returns run.json's content plus weights, members and val metrics.
    `baseline`: BaselineParams of a HOG member to add (None: CNNs only)."""
    import mlflow

    from models.ensemble import ENSEMBLE_DIR, save_ensemble
    from models.pyfunc import log_pyfunc, save_pyfunc

    if (seeds is None) == (not runs):
        raise UserError("give either --seeds N or --runs RUN_ID RUN_ID ...")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if runs and len(set(runs)) != len(runs):
        raise UserError("--runs names the same run twice")
    if baseline is not None:
        from tasks.judging.baseline import require_linear

        require_linear(baseline)  # before any member trains
    store = read_prepared(paths.prepared)  # a missing store is one clear error before any training
    uri = tracking.use()
    train_dir = Path(paths.train_dir)
    with tempfile.TemporaryDirectory() as tmp:
        members = train_members(train_params, paths, seeds) if seeds else download_members(runs, Path(tmp) / "runs")
        if not members:
            return {}
        member_ids = [run_id for run_id, _ in members]  # the CNNs' MLflow runs
        if baseline is not None:
            from tasks.judging.baseline import fit_hog_member

            log.info("fitting the %s baseline as one more member", baseline.kind)
            hog = fit_hog_member(baseline, store, Path(tmp) / "hog")
            members.append((f"baseline:{baseline.kind}", hog))
        ensemble, metrics = fit([folder for _, folder in members], paths.prepared, weighting)
        weights = [round(float(w), 6) for w in ensemble.weights]
        log.info(
            "ensemble weights %s (%s); val acc %.4f (members %s)",
            weights,
            "fitted on val" if metrics["ensemble/weights_fitted"] else "equal",
            metrics["val/ensemble/acc"],
            [round(metrics[f"val/m{i}/acc"], 4) for i in range(len(members))],
        )
        folder = save_ensemble(
            Path(tmp) / ENSEMBLE_DIR,
            [f for _, f in members],
            ensemble.weights,
            info={"member_run_ids": member_ids},
        )
        example = np.asarray(store.images[int(store.split("val")["row"].iloc[0])])
        version = dataset_version(paths)
        experiment_id = tracking.experiment_id(train_params.experiment)
        client = mlflow.MlflowClient()
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"ensemble-{len(members)}") as active:
            run_id = active.info.run_id
            mlflow.set_tags(
                {
                    KIND_TAG: "ensemble",
                    MEMBERS_TAG: json.dumps(member_ids),
                    WEIGHTS_TAG: json.dumps(weights),
                    "git_commit": git_commit(),
                    "dataset_version": version,
                    "stage": "train",
                }
            )
            mlflow.log_params(
                {
                    "ensemble.members": len(members),
                    "ensemble.baseline_member": baseline.kind if baseline is not None else "none",
                    "ensemble.pooling": "linear",
                    "ensemble.weighting": weighting,
                    "train.network": train_params.network,
                }
            )
            mlflow.log_metrics(metrics)
            model_uri = log_pyfunc({ENSEMBLE_DIR: folder}, example).model_uri
            with atomic_dir(train_dir / "model") as model_dir:
                save_pyfunc(model_dir, {ENSEMBLE_DIR: folder}, example)
            mlflow.set_tags(run_records.pending_registration_tags())
        for member_id in member_ids:
            if client.get_run(member_id).data.tags.get(run_records.REGISTERED_TAG) != "true":
                run_records.mark_not_registered(client, member_id, f"member of ensemble run {run_id}")
    info = run_records.write_run(
        train_dir,
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        dataset_version=version,
        model_uri=model_uri,
    )
    return info | {"members": [name for name, _ in members], "weights": weights, "metrics": metrics}
