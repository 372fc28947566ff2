"""The image store on S3 (`paths.store: s3://bucket/prefix`) against a real local S3: moto's server
mode, started as a subprocess (tests/integration/prod_servers.py). Credentials and endpoint come
from the standard AWS environment only (AWS_ENDPOINT_URL included), as on a production worker.

1. the store's round trip: write, read, exists, list, delete; a corrupt object is a flagged row;
2. ingest -> clean -> validate -> split -> augment with the store on S3 gives the manifests, flags and
   prepared images of the same images with a local store;
3. the same on two `dask worker` processes, each started in its own working and scratch folder (so
   nothing of the driver's disk is reachable from them): identical to the in-process run."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.planted import plant
from tasks import augment, clean, ingest, split, validate
from tasks.checks.quality import inspect_partition
from tasks.common import engine
from tasks.common.params import Paths
from tasks.common.review_queue import _thumbnail
from tasks.common.store import ImageStore
from tasks.judging.scoring import model_inputs
from tests.helpers.images import digit_pictures, png_bytes
from tests.integration import prod_servers as ps

pytestmark = pytest.mark.timeout(240)

BUCKET = "imgcls-store"
# ingested_at is the wall-clock time of each ingest run: everything else must be equal
VOLATILE = ["ingested_at"]
MANIFESTS = (
    "data/manifests/ingested.parquet",
    "data/manifests/cleaned.parquet",
    "data/manifests/validated.parquet",
    "data/manifests/split.parquet",
    "data/prepared/index.parquet",
)
TEXTS = ("reports/ingest/skipped.csv", "reports/clean/flagged.csv", "reports/validate/flagged.csv")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    for module in ("moto", "boto3", "s3fs"):
        pytest.importorskip(module)
    workdir = tmp_path_factory.mktemp("moto")
    with ps.s3_server(workdir, buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def aws(s3, monkeypatch):
    """The driver's environment: the same variables a worker machine would have."""
    import s3fs

    for name, value in {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # no filesystem object made under another environment
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    return s3


def test_store_round_trip_on_s3(aws, tmp_path):
    store = ImageStore(f"s3://{BUCKET}/round-trip/")
    assert store.remote and store.for_workers() == f"s3://{BUCKET}/round-trip"
    good, corrupt = png_bytes(90), b"\x89PNG\r\n\x1a\n not really an image"
    ids = {}
    for name, data in (("good", good), ("corrupt", corrupt)):
        ids[name] = hashlib.sha256(data).hexdigest()
        (tmp_path / name).write_bytes(data)
        store.write(ids[name], tmp_path / name)
    # the layout is the local one, under the prefix
    assert sorted(aws.keys(BUCKET, "round-trip/")) == sorted(f"round-trip/{i[:2]}/{i}" for i in ids.values())
    assert store.read_bytes(ids["good"]) == good
    assert store.exists(ids["good"]) and not store.exists("0" * 64)
    assert store.sizes() == {ids["good"]: len(good), ids["corrupt"]: len(corrupt)}
    assert store.missing([ids["good"], "0" * 64]) == ["0" * 64]
    # what a worker runs: given the URL only; a corrupt object is a "corrupt" inspection, a missing one None
    found = dict(inspect_partition([ids["good"], ids["corrupt"], "0" * 64], store.for_workers(), 10_000))
    assert found[ids["good"]].status == "ok"
    assert found[ids["corrupt"]].status == "corrupt"
    assert ids["corrupt"] in found[ids["corrupt"]].detail  # named by its id, like a local file
    assert found["0" * 64] is None
    # promote's scoring hands the pyfunc base64 bytes for a URL; the review page draws it
    url = store.location_of(ids["good"])
    assert base64.b64decode(model_inputs([url])[0]) == good
    assert _thumbnail(url, 32) is not None and _thumbnail(store.location_of("0" * 64), 32) is None
    assert store.delete([ids["corrupt"]]) == 1
    assert store.ids() == {ids["good"]}


def test_local_store_keeps_its_layout_and_a_bad_scheme_is_one_line(tmp_path):
    from tasks.common.params import ParamsError, parse_section

    store = ImageStore(tmp_path / "store")
    data = png_bytes(40)
    image_id = hashlib.sha256(data).hexdigest()
    (tmp_path / "new").write_bytes(data)
    store.write(image_id, tmp_path / "new")
    assert (tmp_path / "store" / image_id[:2] / image_id).read_bytes() == data
    assert store.source(image_id) == tmp_path / "store" / image_id[:2] / image_id  # a Path: nothing read
    assert store.sizes() == {image_id: len(data)} and store.missing([image_id, "f" * 64]) == ["f" * 64]
    assert store.delete([image_id]) == 1 and store.ids() == set()
    with pytest.raises(ParamsError, match=r"^params.yaml: paths.store: .*unknown storage scheme nosuch://"):
        parse_section({"paths": {"store": "nosuch://bucket/x"}}, "paths", Paths)
    assert parse_section({"paths": {"store": "s3://bucket/x"}}, "paths", Paths).store == "s3://bucket/x"


# ---------------------------------------------------------------------------------------- pipeline
def _digits(per_class: int = 16, classes=(0, 1, 7)) -> list[tuple[np.ndarray, str]]:
    return digit_pictures(per_class, classes)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    plant(_digits(), root, seed=3, per_fault=1, flip_fraction=0.03)
    return root / "images"


def _run_pipeline(project: Path, source: Path, store: str) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(project)
    try:
        paths = Paths(store=store)
        ingest.run(ingest.Params(source=str(source)), paths)
        clean.run(clean.Params(), paths)
        validate.run(
            validate.Params(min_per_class=5, suspect_label={"model": "kernel", "folds": 3, "retrain": False}), paths
        )
        split.run(split.Params(group_radius=12), paths)  # wide: hash-near pairs go to the thumbnail check
        augment.run(augment.Params(image_size=16, preview={"images": 2, "draws": 1}), paths)
    finally:
        os.chdir(old)
    return project


@pytest.fixture(scope="module")
def local_run(planted, tmp_path_factory) -> Path:
    """The reference: the same images, a local store, in-process."""
    with engine.configured(engine.EngineParams()):
        return _run_pipeline(tmp_path_factory.mktemp("local"), planted, "data/store")


def _assert_same_outputs(a: Path, b: Path) -> None:
    for name in MANIFESTS:
        left, right = pd.read_parquet(a / name), pd.read_parquet(b / name)
        pd.testing.assert_frame_equal(
            left.drop(columns=VOLATILE, errors="ignore"), right.drop(columns=VOLATILE, errors="ignore"), obj=name
        )
    for name in TEXTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "data/prepared/stats.json").read_bytes() == (b / "data/prepared/stats.json").read_bytes()
    np.testing.assert_array_equal(np.load(a / "data/prepared/images.npy"), np.load(b / "data/prepared/images.npy"))


def test_pipeline_on_an_s3_store_matches_a_local_store(aws, planted, local_run, tmp_path):
    url = f"s3://{BUCKET}/in-process"
    with engine.configured(engine.EngineParams()):
        remote = _run_pipeline(tmp_path / "s3", planted, url)
    assert not (remote / "data/store").exists()  # nothing of the store on the driver's disk
    ingested = pd.read_parquet(remote / "data/manifests/ingested.parquet")
    assert set(ImageStore(url).ids()) == set(ingested["image_id"])
    _assert_same_outputs(local_run, remote)
    flagged = pd.read_csv(remote / "reports/clean/flagged.csv", keep_default_na=False)
    assert {"corrupt", "duplicate", "near_duplicate"} <= set(flagged["reason"])
    # a second ingest copies nothing (one listing, not a request per image) and prunes nothing
    old = os.getcwd()
    os.chdir(remote)
    try:
        again = ingest.run(ingest.Params(source=str(planted)), Paths(store=url))
    finally:
        os.chdir(old)
    assert again["copied"] == 0 and again["pruned_from_store"] == 0


def _dask_command() -> list[str]:
    beside = Path(sys.executable).with_name("dask")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "dask"]


@pytest.fixture
def dask_workers(aws, tmp_path):
    """`dask scheduler` and two `dask worker` processes, each worker in its own cwd and scratch folder,
    with the AWS environment and nothing else of the driver's."""
    distributed = pytest.importorskip("distributed")
    env = {**os.environ, **aws.env, "AWS_ENDPOINT_URL": aws.endpoint}
    port = ps.free_port()
    address = f"tcp://{ps.HOST}:{port}"
    procs = []
    try:
        sched_dir = tmp_path / "scheduler"
        sched_dir.mkdir()
        procs.append(
            ps.spawn(
                "dask scheduler",
                [*_dask_command(), "scheduler", "--host", ps.HOST, "--port", str(port), "--no-dashboard"],
                sched_dir / "log",
                env=env,
                cwd=sched_dir,
            )
        )
        for n in (1, 2):
            home = tmp_path / f"worker{n}"
            (home / "scratch").mkdir(parents=True)
            procs.append(
                ps.spawn(
                    f"dask worker {n}",
                    [*_dask_command(), "worker", address, "--nthreads", "1", "--no-dashboard"]
                    + ["--local-directory", str(home / "scratch"), "--memory-limit", "768MiB"],
                    home / "log",
                    env=env,
                    cwd=home,
                )
            )
        with distributed.Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=90)
            assert {Path(d).parent for d in client.run(os.getcwd).values()} == {tmp_path}
            yield address, client
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(tmp_path / "scheduler", ignore_errors=True)


def test_dask_workers_with_their_own_folders_read_the_s3_store(dask_workers, planted, local_run, tmp_path):
    import distributed

    address, client = dask_workers
    cfg = engine.EngineParams(address=address, in_process_below=0, partition_size=16)
    with distributed.get_task_stream(client) as stream, engine.configured(cfg):
        remote = _run_pipeline(tmp_path / "driver", planted, f"s3://{BUCKET}/cluster")
    ran = {str(task["key"]) for task in stream.data}
    # (split's near-duplicate check takes its copies from clean's inspection cache: nothing to decode)
    for name in ("inspect_partition", "_decode_partition", "_load_partition"):
        assert any(name in key for key in ran), (name, ran)
    assert len({task["worker"] for task in stream.data}) == 2  # both workers took partitions
    _assert_same_outputs(local_run, remote)
