"""LightningDataModule over the prepared store written by `augment`: images.npy memory-mapped
(workers read only the rows they need), index.parquet for rows/labels/splits, and the
albumentations specs augment.json (train) and eval.json (val), both ending in Normalize."""

from __future__ import annotations

import math
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from tasks.common import prepared as store
from tasks.common.errors import UserError


class PreparedImages(Dataset):
    def __init__(self, images_path: Path, rows: np.ndarray, labels: np.ndarray, transform: A.Compose):
        self.images_path = images_path
        self.rows = rows
        self.labels = labels
        self.transform = transform
        self._images: np.ndarray | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        image = self.transform(image=np.array(self._images[self.rows[i]]))["image"]
        if image.ndim == 2:  # some transforms drop the channel axis of grayscale images
            image = image[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)), int(self.labels[i])


# OpenCV (albumentations' warps) gives every process a pool of one thread per core: a dozen loader
# workers on a 16-core GPU host were ~200 threads contending over 28 px images (the loader ran at half
# speed, BENCHMARKS.md). One per worker.
WORKER_OPENCV_THREADS = 1


def opencv_threads_for_workers() -> None:
    """Set OpenCV's thread count in this process before it forks loader workers, which inherit it. Not in
    the worker itself: a forked child that calls cv2.setNumThreads waits forever on the lock of the
    parent's pool if the parent had used it. With workers, this process runs no augmentation itself."""
    import cv2

    cv2.setNumThreads(WORKER_OPENCV_THREADS)


def seed_worker(worker_id: int) -> None:
    """albumentations keeps its own generator, untouched by torch/numpy seeding: without this, every
    worker would replay the same augmentations. torch.initial_seed() differs per worker and derives
    from the loader's seeded generator, so runs stay reproducible."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class PreparedDataModule(L.LightningDataModule):
    def __init__(self, prepared: str | Path, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False):
        super().__init__()
        self.prepared = Path(prepared)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        store.require(self.prepared)
        self.classes: list[str] = store.read_json(self.prepared, store.CLASSES)
        self.stats: dict = store.read_json(self.prepared, store.STATS)
        index = store.read_index(self.prepared)
        # balance copies repeat minority train images; each is augmented afresh, so they stay in train
        self.train_index = index[index["split"] == "train"].reset_index(drop=True)
        self.val_index = index[(index["split"] == "val") & ~index["balance_copy"].astype(bool)].reset_index(drop=True)
        for name, part in (("train", self.train_index), ("val", self.val_index)):
            if part.empty:
                raise UserError(f"{self.prepared}: the prepared store has no {name} images")

    def class_counts(self) -> np.ndarray:
        """Train rows per class, balance copies included (what the loss actually sees)."""
        return np.bincount(self.train_index["label_idx"].to_numpy(), minlength=len(self.classes))

    def _dataset(self, index: pd.DataFrame, spec: str) -> PreparedImages:
        transform = A.load(str(self.prepared / spec), data_format="json")
        transform.set_random_seed(self.seed)  # the num_workers=0 case; workers reseed in seed_worker
        return PreparedImages(
            self.prepared / store.IMAGES, index["row"].to_numpy(), index["label_idx"].to_numpy(), transform
        )

    def _loader(self, dataset: PreparedImages, train: bool) -> DataLoader:
        if self.num_workers > 0:
            opencv_threads_for_workers()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # a 1-image batch breaks BatchNorm; under DDP each rank gets its share of the dataset
            drop_last=train and math.ceil(len(dataset) / self._world_size()) > self.batch_size,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return max(1, int(trainer.world_size)) if trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.train_index, store.TRAIN_SPEC), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.val_index, store.EVAL_SPEC), train=False)
