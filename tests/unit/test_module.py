"""The LightningModule's schedules on real (tiny) Trainer fits: any number of optimizer steps works."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from models.module import ImageClassifier

STATS = {"channels": 1, "mean": [0.5], "std": [0.25], "image_size": 8}


def fit(scheduler: str, steps: int, epochs: int = 1) -> list[float]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4 * steps, 1, 8, 8), torch.randint(0, 2, (4 * steps,)))
    module = ImageClassifier("resnet_small", ["a", "b"], STATS, scheduler=scheduler, lr=0.01)
    lrs: list[float] = []

    class RecordLr(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordLr()],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return lrs


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "none"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_few_steps_train_with_every_scheduler(scheduler, steps):
    lrs = fit(scheduler, steps)
    assert len(lrs) == steps and all(lr > 0 for lr in lrs)


def test_onecycle_warms_up_then_anneals():
    lrs = fit("onecycle", steps=10, epochs=2)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1
    assert lrs[0] < lrs[peak] and lrs[-1] < lrs[peak] / 10


class RecordingClassifier(ImageClassifier):
    """Keeps, for every training step, which of its images the step's own logits got right."""

    def forward(self, x):
        self.last_logits = super().forward(x)
        return self.last_logits

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.correct.append((self.last_logits.argmax(1) == batch[1]).float())
        return loss


def test_the_logged_train_accuracy_is_the_epochs_over_every_batch():
    # training_step only updates the metric; the epoch's figure must still count every batch's predictions
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 1, 8, 8), torch.randint(0, 2, (24,)))
    module = RecordingClassifier("resnet_tiny", ["a", "b"], STATS, scheduler="none", lr=0.01)
    module.correct = []
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert len(module.correct) == 6
    assert trainer.callback_metrics["train/acc"].item() == pytest.approx(torch.cat(module.correct).mean().item())
