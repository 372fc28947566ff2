"""The second out-of-fold model of confident learning: a small CNN trained from scratch per fold.

Why a second model: the kernel model on HOG + pixels (tasks.checks.confident_learning) ranks mislabels well
on shapes but gives soft probabilities, so a T-shirt labelled "ankle boot" still gets p ~ 0.06 for
the boot; a CNN is sharper on what it is sure of and wrong in other places. Averaging the two
(bench/data_quality.py, Fashion-MNIST n=3000, 3% flips) raised the average precision of the
given-label ranking from 0.86 (kernel) and 0.84 (CNN) to 0.92.

Training length (validate.suspect_label.cnn_epochs, default 30), measured 2026-11-29 on two 3,000-image
draws of Fashion-MNIST's training part with 3 % flips (half uniform, half to the confusable class), 3 folds,
retrain, ensemble with the kernel model: 8 epochs found 64 and 60 of 90 flips (76 and 79 flagged), 30
epochs 76 and 74 (99 flagged each); 15 and 20 epochs lay between. The CNN alone reaches 0.78 accuracy on
the true labels after 8 epochs and 0.84 after 20. Shift and mirror augmentation, label smoothing and
mirrored test-time averaging ranked no better than plain 20 epochs, a 2x wider network 0.006 better in
average precision at 2.3x the time (BENCHMARKS.md, 2026-11-29). On large data cnn_budget caps the
images seen per fold, so 30 costs only small and medium data sets more (docs/scaling.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.checks.confident_learning import OofMember, Progress, budget_rows

WIDTH = 16  # channels of the first stage (then 2x, 4x)
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
PREDICT_BATCH = 512
MIN_STEPS = 100  # optimizer steps per fold at least: a few hundred images still get a trained model
RGB = 3  # the network always sees three channels; a grey data set is kept as one (a third of the memory)


def _widened(pixels: torch.Tensor) -> torch.Tensor:
    """N x C x H x W with C = 3: a grey copy's one channel repeated (exactly what RGB decoding gives)."""
    return pixels.repeat(1, RGB, 1, 1) if pixels.shape[1] == 1 else pixels


def network(in_chans: int, num_classes: int) -> nn.Module:
    """Five 3x3 conv layers (16, 16 | 32, 32 | 64 channels, two 2x poolings), global pooling, linear:
    ~36k parameters, 32x32 inputs, about 5,000 training images/s on two CPU cores."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    w = WIDTH
    return nn.Sequential(
        block(in_chans, w),
        block(w, w),
        nn.MaxPool2d(2),
        block(w, 2 * w),
        block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(4 * w, num_classes),
    )


def steps_per_epoch(n_train: int) -> int:
    return -(-max(1, n_train) // BATCH_SIZE)


def epochs_for(n_train: int, epochs: int, budget: int) -> int:
    """`epochs`, fewer when a fold is large: at most `budget` training images seen per fold, at least one
    epoch (on 56,000 images per fold a single pass teaches more than eight on 2,400; a fold larger than
    the budget trains on a sample of it: CnnMember.fit); more when a fold is so small that `epochs`
    would be under MIN_STEPS steps."""
    return max(1, min(epochs, budget // max(1, n_train)), -(-MIN_STEPS // steps_per_epoch(n_train)))


def cnn_model(images: np.ndarray, *, epochs: int, budget: int, seed: int) -> CnnMember:
    """The out-of-fold loop's member (tasks.checks.confident_learning.OofMember) over `images`
    (uint8 [N, H, W, C], C = 3, or 1 for a grey data set). Inputs are standardized with the mean/std of all images (no labels involved)."""
    return CnnMember(images, epochs=epochs, budget=budget, seed=seed)


class CnnMember(OofMember):
    """A fold model is the network's state_dict (CPU tensors) plus the input mean/std it was trained
    with ("input_mean", "input_std"): a flat dict of tensors, saved as safetensors by the cache
    (tasks.checks.suspect_cache), so images that arrive later are standardized as the training ones were."""

    kind = "cnn"

    def __init__(self, images: np.ndarray, *, epochs: int, budget: int, seed: int) -> None:
        super().__init__(images)
        self.epochs, self.budget, self.seed = epochs, budget, seed
        sample = self.pixels[:: max(1, len(self.pixels) // 4096)].float()
        self.mean = _widened(sample.mean(dim=(0, 2, 3), keepdim=True))
        self.std = _widened(sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1.0))

    def _set_data(self, images: np.ndarray | None) -> None:
        self.data = images
        self.pixels = None if images is None else torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where it is fitted

    def fit(self, labels: np.ndarray, train_idx: np.ndarray, num_classes: int) -> dict[str, torch.Tensor]:
        device, mean, std = self.device, self.mean.to(self.device), self.std.to(self.device)
        torch.manual_seed(self.seed)  # same initial weights in every fold and round
        order = torch.Generator().manual_seed(self.seed)
        model = network(RGB, num_classes).to(device)
        if len(train_idx) > self.budget:  # one pass over a sample, each class in its share: the cost stops growing
            train_idx = budget_rows(train_idx, np.asarray(labels), self.budget, self.seed)
        train = torch.from_numpy(np.asarray(train_idx))
        targets = torch.from_numpy(np.asarray(labels, dtype=np.int64)[train_idx]).to(device)
        n_epochs = epochs_for(len(train), self.epochs, self.budget)
        steps = n_epochs * steps_per_epoch(len(train))
        optimizer = torch.optim.AdamW(model.parameters(), LEARNING_RATE, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
        model.train()
        # one fold's epochs: on a terminal a bar that goes when the fold is done; in a log, a line every 10 s
        with Progress(n_epochs, f"validate: CNN on {len(train)} images", "epoch", leave=False) as progress:
            for _ in range(n_epochs):
                perm = torch.randperm(len(train), generator=order)
                for start in range(0, len(train), BATCH_SIZE):
                    chosen = perm[start : start + BATCH_SIZE]
                    if len(chosen) < 2:  # BatchNorm needs two images
                        continue
                    batch = (_widened(self.pixels[train[chosen]]).to(device).float() - mean) / std
                    loss = F.cross_entropy(model(batch), targets[chosen])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                progress.update()
        state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
        return {**state, "input_mean": self.mean.clone(), "input_std": self.std.clone()}

    def predict(self, fitted: dict[str, torch.Tensor], data: np.ndarray, num_classes: int) -> np.ndarray:
        """Probabilities [len(data), num_classes] of the fold model `fitted` on uint8 images [M, H, W, C]
        (C = 1 for grey, 3)."""
        state = {name: t for name, t in fitted.items() if not name.startswith("input_")}
        model = network(RGB, num_classes)
        model.load_state_dict(state)
        model.to(self.device).eval()
        mean, std = fitted["input_mean"].to(self.device), fitted["input_std"].to(self.device)
        pixels = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2)
        with torch.no_grad():
            probs = [
                F.softmax(
                    model((_widened(pixels[s : s + PREDICT_BATCH]).to(self.device).float() - mean) / std), dim=1
                ).cpu()
                for s in range(0, len(pixels), PREDICT_BATCH)
            ]
        return torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, num_classes))
