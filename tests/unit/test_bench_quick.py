"""Every speed benchmark's --quick mode on real Fashion-MNIST (Debian package), in-process: the JSON
has its structure, rates are positive and each ratio is the quotient of the two rates measured in
the same run. No speed thresholds here: the goals are judged in BENCHMARKS.md from full runs."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import accuracy, clean_scaling, cpu_precision, data_path, fashion, loader_threads, loop_overhead, prediction
from bench.common import write_array_store
from bench.fashion import IDX_DIR

pytestmark = pytest.mark.skipif(
    not (IDX_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One small prepared store (300 Fashion-MNIST images, 80/10/10) shared by the training benches,
    written straight in augment's layout: what they time is training, not the data stages (whose
    whole run the accuracy bench's test below covers)."""
    images, labels = fashion.load("train")
    rows = fashion.subset(labels, 30)
    splits = np.resize(["train"] * 8 + ["val", "test"], len(rows))
    transforms = [{"name": "Affine", "translate_percent": [-0.08, 0.08], "p": 0.5}]
    paths = write_array_store(
        tmp_path_factory.mktemp("bench_store"), images[rows], labels[rows], splits, fashion.CLASSES, transforms, False
    )
    return Path(paths.prepared)


def run(module, tmp_path, *args: str) -> dict:
    out = tmp_path / "result.json"
    assert module.main(["--quick", "--out", str(out), *args]) == 0
    result = json.loads(out.read_text())
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["date"]
    assert {"torch", "lightning", "albumentations"} <= set(machine["versions"])
    return result


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3)


def test_loop_overhead_compares_lightning_with_the_plain_loop(prepared, tmp_path, capsys):
    result = run(loop_overhead, tmp_path, "--prepared", str(prepared))
    assert result["order"] == ["lightning", "plain"]
    for kind in ("lightning", "plain"):
        (one,) = result["runs"][kind]
        assert one["timed_images"] == (6 - 2) * 16 and one["timed_seconds"] > 0
        assert result[kind]["images_per_s"] > 0 and result[kind]["end_to_end_seconds"] > 0
    assert close(result["ratio"], result["lightning"]["images_per_s"] / result["plain"]["images_per_s"])
    assert result["goal"] == 0.97 and len(result["pair_ratios"]) == 1
    assert "ratio Lightning/plain" in capsys.readouterr().out


def test_sync_probe_needs_a_gpu_and_counts_sync_warnings_by_line(tmp_path, monkeypatch):
    import warnings

    import torch

    with pytest.raises(SystemExit) as refused:
        loop_overhead.main(["--quick", "--sync-probe", "--out", str(tmp_path / "r.json")])
    assert refused.value.code == 2
    # CUDA's sync debug mode itself needs a GPU: here only the counting between start and stop is checked
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(loop_overhead, "SYNC_PROBE", True)
    probe = loop_overhead.SyncProbe()
    warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # before start: not counted
    probe.start()
    for _ in range(3):
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
    warnings.warn("something else", stacklevel=1)
    probe.stop()
    assert modes == ["warn", "default"]
    ((where, count),) = probe.counts.items()
    assert count == 3 and where.rsplit(":", 1)[0] == __file__  # the line that caused them
    assert probe.report({})["syncs"] == {where: 3}


def test_data_path_measures_supply_demand_and_both_augmenters(prepared, tmp_path):
    result = run(data_path, tmp_path, "--prepared", str(prepared))
    feed, augment = result["feed"], result["augment"]
    assert feed["loader"]["images"] == 4 * 16 and feed["step"]["images"] == 3 * 16
    assert feed["loader"]["images_per_s"] > 0 and feed["step"]["images_per_s"] > 0
    assert close(feed["ratio"], feed["loader"]["images_per_s"] / feed["step"]["images_per_s"])
    assert augment["images"] == 100
    assert close(augment["ratio"], augment["albumentations_images_per_s"] / augment["torchvision_images_per_s"])


def test_loader_threads_times_both_opencv_settings_and_restores_the_default(prepared, tmp_path):
    import models.data

    out = tmp_path / "result.json"
    args = ["--prepared", str(prepared), "--batch-size", "8", "--batches", "2", "--repeats", "2", "--out", str(out)]
    assert loader_threads.main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["images_per_s"]) == {"opencv_default", "opencv_one"}
    assert all(len(rates) == 2 and min(rates) > 0 for rates in result["images_per_s"].values())
    medians = result["median_images_per_s"]
    assert close(result["one_thread_over_default"], medians["opencv_one"] / medians["opencv_default"])
    assert models.data.WORKER_OPENCV_THREADS == 1


def test_torchvision_twin_matches_the_albumentations_spec_without_augmentation(prepared):
    """With the affine step off (p=0), both pipelines only normalize: same numbers."""
    import numpy as np
    import torch

    from models.transforms import load_transforms

    spec = json.loads((prepared / "augment.json").read_text())
    spec["transform"]["transforms"][0]["p"] = 0.0
    album, _ = load_transforms(prepared)
    album.transforms[0].p = 0.0
    image = np.array(np.load(prepared / "images.npy", mmap_mode="r")[0])
    ours = album(image=image)["image"].transpose(2, 0, 1)
    twin = data_path.torchvision_twin(spec)(torch.from_numpy(image).permute(2, 0, 1)).numpy()
    assert np.allclose(ours, twin, atol=1e-5)


def test_clean_scaling_times_n_2n_4n(tmp_path):
    result = run(clean_scaling, tmp_path, "--workers", "1")
    runs = result["runs"]
    assert [r["images"] for r in runs.values()] == [100, 200, 400]
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 and r["kept"] <= r["images"] for r in runs.values())
    t1, t4 = runs["100"]["seconds"], runs["400"]["seconds"]
    assert close(result["time_ratio_4n_n"], t4 / t1)
    assert math.isclose(result["growth_exponent"], math.log(t4 / t1) / math.log(4), abs_tol=1e-3)


def test_prediction_latency_and_throughput_through_the_pyfunc(prepared, tmp_path):
    result = run(prediction, tmp_path, "--prepared", str(prepared), "--threads", "1")
    measured = result["threads"]["1"]
    single = measured["single"]
    assert single["requests"] == 30 and 0 < single["p50_ms"] <= single["p99_ms"]
    assert 0 < measured["network_only"]["p50_ms"]
    assert measured["batch"]["batch_size"] == 32 and measured["batch"]["images_per_s"] > 0


def test_accuracy_runs_the_whole_pipeline_and_keeps_the_official_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # the kernel suspect-label model: this test is about the pipeline and the split, not validate's CNN
    # (test_validate's planted-flips test runs the default ensemble)
    result = run(
        accuracy,
        tmp_path,
        "--workdir",
        str(tmp_path / "w"),
        "--set",
        "train.batch_size=32",
        "--set",
        "validate.suspect_label={model: kernel}",
    )
    assert result["train"]["batch_size"] == 32 and result["epochs_run"] == 1
    assert 0.0 < result["test_acc"] <= 1.0 and 0.0 < result["baseline_test_acc"] <= 1.0
    assert set(result["seconds"]) == {"ingest", "clean", "validate", "split", "augment", "train", "evaluate"}
    assert "suspect-label model (kernel)" in (tmp_path / "w" / "reports" / "validate" / "summary.md").read_text()
    split = pd.read_parquet(tmp_path / "w" / "data" / "manifests" / "split.parquet")
    official_test = split["source_path"].str.contains("images/test/")
    # --quick keeps 20 official test images per class; clean may set aside exact copies only
    assert (split.loc[official_test, "split"] == "test").all() and official_test.sum() >= 190
    assert (split.loc[~official_test, "split"] != "test").all()


def test_accuracy_overrides_are_section_key_value_pairs():
    assert accuracy.parse_overrides(["train.batch_size=256", "clean.workers=16", "augment.image_size=28"]) == {
        "train": {"batch_size": 256},
        "clean": {"workers": 16},
        "augment": {"image_size": 28},
    }
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        accuracy.parse_overrides(["batch_size=256"])


@pytest.mark.slow  # ~40 s: two tiny trials, then both arms trained and scored
def test_tune_search_compares_the_study_best_with_the_defaults(tmp_path, monkeypatch):
    from bench import tune_search

    # the bench points MLflow at its own store and works in its folder: both restored after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'unused.db'}")
    monkeypatch.chdir(tmp_path)

    result = run(tune_search, tmp_path, "--root", str(tmp_path / "w"))
    study = result["study"]
    assert study["trials"] == 2 and study["mlflow"]["parent_runs"] == 1
    assert study["mlflow"]["trial_runs_under_the_parent"] == study["mlflow"]["trial_runs"] == 2
    defaults, tuned = (result["arms"][arm]["summary"] for arm in ("defaults", "tuned"))
    assert 0.0 < defaults["test_acc_mean"] <= 1.0 and 0.0 < tuned["test_acc_mean"] <= 1.0
    assert result["test_acc_margin_tuned_minus_defaults"] == pytest.approx(
        tuned["test_acc_mean"] - defaults["test_acc_mean"], abs=1e-4
    )
    # the tuned arm trains with the study's best values laid over the defaults
    for key, value in study["best_params"].items():
        assert result["tuned_train"][key] == value


def test_cpu_precision_compares_every_arm_with_fp32_in_the_same_run(tmp_path):
    result = run(cpu_precision, tmp_path)
    arms = result["summary"]["resnet_tiny"]
    assert set(arms) == {"32-true cl=False", "32-true cl=True", "bf16-mixed cl=False", "bf16-mixed cl=True"}
    baseline = arms["32-true cl=False"]["images_per_s"]
    for cell in arms.values():
        assert cell["images_per_s"] > 0
        assert abs(cell["vs_32_true"] - cell["images_per_s"] / baseline) < 1e-4  # rounded to 4 places
    assert result["fast_bf16"] == (result["amx"] or result["avx512_bf16"])
    assert result["auto"] == {"precision": "bf16-mixed" if result["fast_bf16"] else "32-true", "channels_last": True}


def test_near_duplicate_knobs_measures_each_setting_and_restores_the_rule(tmp_path):
    from bench import near_duplicate_knobs
    from tasks.checks import registration, similarity

    before = registration.K_NEAREST, similarity.SHADE_PREFILTER, similarity.zoom_similarity
    out = tmp_path / "knobs.json"
    argv = ["--part", "digits", "--n", "200", "--per-kind", "2", "--settings", "3:0.8:plain,8:0.5:zoom"]
    assert near_duplicate_knobs.main([*argv, "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    fewer, more = settings["3:0.8:plain"], settings["8:0.5:zoom"]
    # more nearest and a lower pre-filter register more pairs, and find at least as many copies
    assert more["registered_pairs"] > fewer["registered_pairs"] > 0
    assert more["recall"] >= fewer["recall"] > 0.5
    assert (registration.K_NEAREST, similarity.SHADE_PREFILTER, similarity.zoom_similarity) == before


def test_device_wheels_are_the_requirement_closure_less_what_the_image_has():
    from importlib.metadata import version

    from bench.device_wheels import missing

    everything = missing(("mlflow-skinny",), have=set())
    assert everything["mlflow-skinny"] == version("mlflow-skinny")
    assert everything["sqlparse"] == version("sqlparse")  # a requirement of a requirement
    assert "pip" not in everything
    fewer = missing(("mlflow-skinny",), have={"SQLParse", "mlflow_skinny"})
    assert "sqlparse" not in fewer and "mlflow-skinny" not in fewer
    assert set(fewer) < set(everything)
