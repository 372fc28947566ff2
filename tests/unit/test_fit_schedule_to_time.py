"""A time budget shorter than the epochs asked for: FitScheduleToTime ends the LR schedule when the time
runs out, where Lightning's max_time alone cuts the run at a high learning rate; the decision survives
a resume. Real Trainer fits on tiny data, each batch slowed to a known time so epochs are seconds long."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from models.callbacks import FitScheduleToTime
from models.module import ImageClassifier

STATS = {"channels": 1, "mean": [0.5], "std": [0.25], "image_size": 8}
BATCHES, BATCH_SECONDS, BUDGET_SECONDS, MAX_EPOCHS = 6, 0.1, 6.0, 100


@pytest.fixture(autouse=True)
def one_thread():
    # the tiny steps gain nothing from threads, and on a loaded machine a spinning OpenMP team can stall
    # a step for seconds, which would make the epochs' times (what is under test) erratic
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SlowBatches(L.Callback):
    """Each batch takes BATCH_SECONDS more (an epoch about 0.6 s), and the LR of every step is kept."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        time.sleep(BATCH_SECONDS)


def fit(
    scheduler: str, callbacks: list, ckpt_dir=None, ckpt_path=None, budget: float = BUDGET_SECONDS
) -> tuple[L.Trainer, SlowBatches]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4 * BATCHES, 1, 8, 8), torch.randint(0, 2, (4 * BATCHES,)))
    module = ImageClassifier("resnet_tiny", ["a", "b"], STATS, scheduler=scheduler, lr=0.01)
    slow = SlowBatches()
    checkpoints = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True)] if ckpt_dir else []
    trainer = L.Trainer(
        max_epochs=MAX_EPOCHS,
        max_time={"seconds": budget},
        accelerator="cpu",
        logger=False,
        enable_checkpointing=bool(ckpt_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[slow, *callbacks, *checkpoints],
    )
    trainer.fit(module, DataLoader(data, batch_size=4), ckpt_path=ckpt_path, weights_only=False)
    return trainer, slow


def test_without_it_the_budget_cuts_the_run_at_a_high_learning_rate():
    trainer, slow = fit("onecycle", [])
    assert trainer.current_epoch < MAX_EPOCHS / 4  # the budget, not max_epochs, ended it
    assert slow.lrs[-1] > 0.5 * max(slow.lrs)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_the_schedule_ends_with_the_epochs_that_fit(scheduler):
    fitted = FitScheduleToTime()
    trainer, slow = fit(scheduler, [fitted])
    assert fitted.epochs is not None and 2 <= fitted.epochs < MAX_EPOCHS / 4
    # it ran to the epoch it planned (the Timer did not cut it) and the LR had annealed by then
    assert trainer.current_epoch == fitted.epochs
    assert len(slow.lrs) == fitted.epochs * BATCHES
    assert slow.lrs[-1] < 0.02 * max(slow.lrs)


def test_a_resumed_run_keeps_the_shortened_schedule(tmp_path):
    fitted = FitScheduleToTime()
    fit("onecycle", [fitted], ckpt_dir=tmp_path)
    resumed = FitScheduleToTime()
    trainer, slow = fit("onecycle", [resumed], ckpt_dir=tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.epochs == fitted.epochs
    assert trainer.current_epoch == fitted.epochs and slow.lrs == []  # nothing left to train
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == fitted.epochs * BATCHES


def test_a_budget_spent_inside_the_first_epoch_ends_the_run_cleanly():
    # the Timer stops the first epoch half-way; the time left is then negative, which once planned 0 epochs
    fitted = FitScheduleToTime()
    trainer, slow = fit("onecycle", [fitted], budget=BATCHES * BATCH_SECONDS / 2)
    assert fitted.epochs == 1 and trainer.current_epoch == 1
    assert 0 < len(slow.lrs) < BATCHES
