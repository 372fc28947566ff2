"""The data stages on a real dask.distributed LocalCluster (2 worker processes, one thread each, small
memory) give exactly what they give in-process: the same manifests, flags and prepared images, in the
same order. Also the Prefect flow's DaskTaskRunner serving the stages' work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.planted import plant
from tasks import augment, clean, ingest, split, validate
from tasks.common import engine
from tasks.common.errors import UserError
from tasks.common.params import Paths
from tests.helpers.cluster_tasks import items_after, items_after_filling_memory, worker_and_items
from tests.helpers.images import digit_pictures

pytestmark = pytest.mark.timeout(240)

# small partitions: many tasks per stage, so ordering across workers is really exercised
ON_CLUSTER = dict(in_process_below=0, partition_size=16)
OUTPUTS = (
    "data/manifests/cleaned.parquet",
    "data/manifests/validated.parquet",
    "data/manifests/split.parquet",
    "reports/clean/flagged.csv",
    "reports/validate/flagged.csv",
    "data/prepared/index.parquet",
    "data/prepared/stats.json",
)


def _digits(per_class: int = 40, classes=(0, 1, 7)) -> list[tuple[np.ndarray, str]]:
    return digit_pictures(per_class, classes)


def _local_cluster(memory_limit: str = "1536MiB"):
    distributed = pytest.importorskip("distributed")
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit=memory_limit, dashboard_address=None
    )


@pytest.fixture(scope="module")
def cluster():
    with _local_cluster() as local:
        yield local


@pytest.fixture
def own_cluster():
    """A cluster for one test: training torch models leaves the workers' processes larger and their
    thread pools started, which the other tests here should not inherit. Each worker gets 3 GiB: a
    worker training the CNN once reached 1.2 GiB, Dask's pause mark (80 % of a 1.5 GiB limit), held it
    as unmanaged memory and stayed paused, so the test waited out its timeout (CI, 2026-11-29)."""
    with _local_cluster(memory_limit="3GiB") as local:
        yield local


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """One ingested project (planted faults: corrupt, duplicates, near-duplicates, outliers, ...)."""
    root = tmp_path_factory.mktemp("ingested")
    old = os.getcwd()
    os.chdir(root)
    try:
        plant(_digits(), root / "planted", seed=1, per_fault=1, flip_fraction=0.03)
        ingest.run(ingest.Params(source=str(root / "planted" / "images")), Paths())
    finally:
        os.chdir(old)
    return root


def _run_data_stages(root: Path) -> None:
    os.chdir(root)
    paths = Paths()
    clean.run(clean.Params(), paths)
    validate.run(
        validate.Params(min_per_class=5, suspect_label={"model": "kernel", "folds": 3, "retrain": False}), paths
    )
    split.run(split.Params(group_radius=12), paths)  # wide: hash-near pairs to verify by thumbnails
    augment.run(augment.Params(image_size=16, preview={"images": 2, "draws": 1}), paths)


def _copy(ingested: Path, target: Path) -> Path:
    shutil.copytree(ingested, target)
    return target


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    np.testing.assert_array_equal(np.load(a / "data/prepared/images.npy"), np.load(b / "data/prepared/images.npy"))


def test_stages_on_a_local_cluster_match_in_process(ingested, cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    here, there = _copy(ingested, tmp_path / "in_process"), _copy(ingested, tmp_path / "cluster")
    with engine.configured(engine.EngineParams()):  # default threshold: this small set stays in-process
        _run_data_stages(here)
    import distributed

    with (
        distributed.Client(cluster, set_as_default=False) as client,
        distributed.get_task_stream(client) as stream,
        engine.configured(engine.EngineParams(address=cluster.scheduler_address, **ON_CLUSTER)),
    ):
        _run_data_stages(there)
    ran = {task["key"][0] if isinstance(task["key"], tuple) else task["key"] for task in stream.data}
    # every stage's per-image work ran on the cluster's workers (split decodes nothing here: its
    # near-duplicate copies come from clean's cache, tests/unit/test_incremental_clean_split.py)
    # ...and validate's out-of-fold models were fitted there, a (fold, model) per task
    for name in ("inspect_partition", "_decode_partition", "_fit_member_task", "_load_partition"):
        assert any(name in key for key in map(str, ran)), (name, ran)
    _assert_same_outputs(here, there)
    flagged = pd.read_csv(there / "reports/clean/flagged.csv", keep_default_na=False)
    assert {"corrupt", "duplicate", "near_duplicate"} <= set(flagged["reason"])
    assert len(pd.read_parquet(there / "data/manifests/cleaned.parquet")) > 100


def test_out_of_fold_models_fitted_on_the_cluster_equal_in_process(own_cluster):
    """Every (fold, member) of confident learning as a task on the workers: the same probabilities
    and the same fold models as fitting them here, for the kernel model and the CNN, in both rounds
    (the second reuses the data scattered for the first)."""
    import torch
    from PIL import Image

    from tasks.checks.confident_learning import fit_suspect_labels, kernel_features, kernel_model
    from tasks.checks.oof_cnn import cnn_model
    from tasks.checks.oof_folds import ClusterFolds, fit_here
    from tasks.common.images import to_array

    pictures = _digits(per_class=30)
    labels = np.unique([label for _, label in pictures], return_inverse=True)[1]
    labels[:3] = labels[[40, 70, 40]]  # three planted flips, so the second round has something to leave out

    images = [Image.fromarray(p) for p, _ in pictures]
    members = [
        kernel_model(kernel_features(images, 8), seed=0),
        cnn_model(np.stack([to_array(i, 8, 1) for i in images]), epochs=2, budget=10_000, seed=0),  # tiny: fast
    ]
    settings = dict(folds=3, seed=0, method="prune_by_noise_rate", max_given_probability=0.5, retrain=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a single-threaded worker: same float order, so the CNN is bit-equal
    try:
        here = fit_suspect_labels(members, labels, **settings, fit_folds=fit_here)
    finally:
        torch.set_num_threads(threads)
    cfg = engine.EngineParams(address=own_cluster.scheduler_address, in_process_below=0)
    with engine.session(len(labels), cfg) as eng:
        fitter = ClusterFolds(eng)
        there = fit_suspect_labels(members, labels, **settings, fit_folds=fitter)
        assert len(fitter._scattered) == 2  # each member's data went out once for both rounds
    assert here.issues.any()
    np.testing.assert_array_equal(here.issues, there.issues)
    np.testing.assert_allclose(here.probs, there.probs, rtol=0, atol=1e-6)
    for fold_here, fold_there in zip(here.fold_models, there.fold_models, strict=True):
        data = members[1].data[:20]
        np.testing.assert_allclose(
            members[1].predict(fold_here[1], data, 3), members[1].predict(fold_there[1], data, 3), atol=1e-6
        )


def test_engine_spreads_partitions_over_workers_in_order(cluster):
    cfg = engine.EngineParams(address=cluster.scheduler_address, in_process_below=0, partition_size=3, window=3)
    with engine.session(20, cfg) as eng:
        assert eng.kind == "cluster" and eng.threads == 2 and eng.running_cluster  # validate's folds go there
        out = list(eng.map_partitions(worker_and_items, list(range(20))))
    assert [x for _, items in out for x in items] == list(range(20))
    assert len({worker for worker, _ in out}) == 2  # both worker processes took partitions


def test_embedded_local_cluster_is_not_a_running_cluster(monkeypatch):
    """An embedded LocalCluster shares this machine's cores: validate keeps its folds in the stage's
    process there (docs/scaling.md, "Measured")."""
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    cfg = engine.EngineParams(in_process_below=0, workers=1, memory_limit="1GiB")
    with engine.session(10, cfg) as eng:
        assert eng.kind == "local-cluster" and eng.client is not None and not eng.running_cluster


@pytest.mark.slow  # Prefect's temporary API server alone took 75 s to start on a loaded 2-core machine
@pytest.mark.timeout(600)
def test_flow_on_the_dask_task_runner(ingested, tmp_path, monkeypatch):
    """The pipeline flow's task runner (DaskTaskRunner) starts its LocalCluster when a stage asks the
    engine for one and serves every data stage of the run; outputs equal the in-process ones."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import flows.pipeline as pipeline

    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    here, there = _copy(ingested, tmp_path / "in_process"), _copy(ingested, tmp_path / "flow")
    monkeypatch.chdir(here)
    with engine.configured(engine.EngineParams()):
        _run_data_stages(here)
    kinds = []

    @flow(task_runner=pipeline.imgcls_pipeline.task_runner, persist_result=False)
    def data_stages(params_path: str) -> None:
        from prefect.context import FlowRunContext

        runner = FlowRunContext.get().task_runner
        for stage in ("clean", "validate", "split", "augment"):
            pipeline.stage_task(stage)(stage, params_path)
            kinds.append(runner._client is not None)

    import yaml

    (there / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "engine": {"workers": 2, "memory_limit": "768MiB", **ON_CLUSTER},
                "validate": {"min_per_class": 5, "suspect_label": {"model": "kernel", "folds": 3, "retrain": False}},
                "augment": {"image_size": 16, "preview": {"images": 2, "draws": 1}},
            }
        )
    )
    monkeypatch.chdir(there)
    with prefect_test_harness(server_startup_timeout=180):  # a loaded machine starts the API slowly
        data_stages("params.yaml")
    assert kinds == [True] * 4  # the runner's cluster was started by clean and used by the others
    _assert_same_outputs(here, there)


def test_a_stage_waiting_on_the_cluster_says_what_the_workers_do(own_cluster, caplog):
    # fresh workers: on the module's cluster, which the stage tests loaded, this failed once in a fresh clone
    cfg = engine.EngineParams(address=own_cluster.scheduler_address, in_process_below=0, partition_size=1)
    with engine.session(2, cfg) as eng, caplog.at_level("WARNING", logger=engine.__name__):
        eng.stall_warning_s = 0.3
        assert list(eng.map_partitions(items_after, ["a", "b"], 1.5)) == [["a"], ["b"]]
    waits = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert waits and "2 workers: running" in waits[0], waits


def test_a_stage_fails_in_one_line_when_every_worker_stays_paused(caplog):
    # the first partition leaves its worker at 88 % of its memory limit, so the worker pauses and the
    # second never starts: without the limit the stage would wait for ever
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GiB", dashboard_address=None
    ) as local:
        cfg = engine.EngineParams(
            address=local.scheduler_address, in_process_below=0, partition_size=1, stalled_limit_s=2
        )
        with engine.session(2, cfg) as eng, caplog.at_level("WARNING", logger=engine.__name__):
            eng.stall_warning_s = 0.5
            with pytest.raises(UserError, match="paused or gone") as failed:
                list(eng.map_partitions(items_after_filling_memory, ["a", "b"], 0.88))
    message = str(failed.value)
    assert "\n" not in message and "1 workers: paused" in message and "engine.memory_limit" in message, message
    assert any("1 workers: paused" in r.getMessage() for r in caplog.records)  # it said so while waiting
