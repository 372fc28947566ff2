"""The DataModule over the prepared store: splits, balance copies, and per-worker augmentation seeds."""

from __future__ import annotations

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


class _OpenCVThreads(torch.utils.data.Dataset):
    """Reports the OpenCV thread count of the process that loads it (a loader worker)."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        import cv2

        return cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread(tmp_path):
    # OpenCV's default is a thread per core in every worker: on a 16-core GPU host a dozen workers made
    # the loader half as fast (BENCHMARKS.md, GPU); the main process keeps its own setting
    import cv2

    from models.data import seed_worker

    cv2.setNumThreads(2)
    loader = torch.utils.data.DataLoader(
        _OpenCVThreads(A.Compose([])), batch_size=1, num_workers=1, worker_init_fn=seed_worker
    )
    assert [int(x) for x in loader] == [1, 1]
    assert cv2.getNumThreads() == 2
