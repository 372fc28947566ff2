"""The DataModule over the prepared store: splits, balance copies, and per-worker augmentation seeds."""

from __future__ import annotations

import os

import albumentations as A
import numpy as np
import pytest
import torch

from models.data import PreparedDataModule
from tasks.common.errors import UserError
from tests.helpers.prepared_store import make_project


def test_train_keeps_balance_copies_and_val_does_not(tmp_path):
    paths = make_project(tmp_path, per_split={"train": 4, "val": 2, "test": 1})
    data = PreparedDataModule(paths.prepared, batch_size=4, num_workers=0, seed=0)
    assert len(data.train_index) == 3 * 4 + 1 and data.train_index["balance_copy"].sum() == 1
    assert len(data.val_index) == 3 * 2 and data.class_counts().tolist() == [5, 4, 4]
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (4, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1.5  # normalized, not 0..255


def test_workers_do_not_replay_the_same_augmentations(tmp_path):
    paths = make_project(tmp_path, per_split={"train": 4, "val": 1, "test": 1})
    # every image identical and a transform that always fires: only the random draws differ
    images = np.full((13, 16, 16, 1), 128, np.uint8)
    np.save(f"{paths.prepared}/images.npy", images)
    A.save(
        A.Compose([A.RandomBrightnessContrast(brightness_limit=0.5, p=1.0), A.Normalize(mean=[0.5], std=[0.2])]),
        f"{paths.prepared}/augment.json",
        data_format="json",
    )
    firsts = []
    for _ in range(2):
        data = PreparedDataModule(paths.prepared, batch_size=1, num_workers=2, seed=7)
        batches = iter(data.train_dataloader())
        firsts.append([next(batches)[0] for _ in range(2)])  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(firsts[0][0], firsts[0][1])  # the two workers draw differently
    assert all(torch.equal(a, b) for a, b in zip(*firsts))  # and the same seed gives the same draws


def test_a_store_without_val_images_is_refused(tmp_path):
    paths = make_project(tmp_path, per_split={"train": 4, "test": 1})
    with pytest.raises(UserError, match="no val images"):
        PreparedDataModule(paths.prepared, batch_size=4, num_workers=0, seed=0)


# run in a fresh interpreter: it must use OpenCV's thread pool before the workers fork, and a hang (what
# setting the count inside a forked worker did) must end as a failure, not stall the suite
_OPENCV_THREADS_IN_WORKERS = """
import sys
import cv2
import numpy as np
import models.data as data

image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
cv2.GaussianBlur(image, (31, 31), 0)  # this process's own pool is up now


class ThreadCount(data.PreparedImages):
    def __getitem__(self, i):
        return cv2.getNumThreads()


data.PreparedImages = ThreadCount
module = data.PreparedDataModule(sys.argv[1], batch_size=2, num_workers=2, seed=0)
print(sorted({int(n) for batch in module.train_dataloader() for n in batch}))
"""


def test_loader_workers_run_opencv_on_one_thread_even_after_the_parent_used_its_pool(tmp_path):
    # OpenCV's default is a thread per core in every worker: on a 16-core GPU host a dozen workers made
    # the loader half as fast (BENCHMARKS.md, GPU, 2026-11-30)
    import subprocess
    import sys
    from pathlib import Path

    paths = make_project(tmp_path, per_split={"train": 4, "val": 1, "test": 1})
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _OPENCV_THREADS_IN_WORKERS, str(paths.prepared)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "NO_ALBUMENTATIONS_UPDATE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[1]"
