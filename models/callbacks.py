"""Lightning callbacks used by train (kept out of networks.py: the shipped model must not need lightning)."""

from __future__ import annotations

import logging
import time

import lightning as L


class FreezeBackbone(L.Callback):
    """Train only the classifier head for the first `epochs` epochs, then everything. Decided from
    the current epoch each time, so a resumed run freezes exactly as the original would have."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = pl_module.network
        head = {id(p) for p in network.get_classifier().parameters()}
        frozen = trainer.current_epoch < self.epochs
        for p in network.parameters():
            p.requires_grad_(not frozen or id(p) in head)


class FitClock(L.Callback):
    """When training proper began (on_train_start: after the processes of a DDP run have all started,
    the process group formed and the sanity check ran), so seconds per epoch measure training alone."""

    def __init__(self):
        self.started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()


class FitScheduleToTime(L.Callback):
    """Makes the LR schedule end when the time budget does. With Trainer(max_time=...) alone, a budget
    shorter than max_epochs stops training mid-schedule: the learning rate never anneals and the best
    checkpoint comes from the high-LR middle of the run. After each epoch this callback estimates the
    epochs that fit in the time left (Lightning's Timer, which a resumed run restores); when that is
    fewer than planned, max_epochs shrinks to it and the module's schedule is rebuilt for that many
    steps, continuing from the current step. Never lengthens a run. The first estimate uses the pace of
    the first epoch's second half (its first batches carry the warm-up: kernel selection, caches, a
    GPU's autotuning); later ones the whole last epoch, with its loader start and checkpoint saving.
    Rank 0's figure is broadcast, so every DDP rank stops together; the plan is saved in checkpoints,
    so a resumed run keeps it (LambdaLR and OneCycleLR save their total in their own state)."""

    SAFETY = 0.95  # of the time left: the epochs' times vary (a shared machine, the data loader)

    def __init__(self):
        self.epochs: int | None = None  # the planned max_epochs once decided
        self._batches, self._started, self._last = 0, 0.0, 0.0
        self._middle: tuple[int, float] | None = None  # (batches run, time) half-way through the epoch
        self._epoch_ended: float | None = None  # when the last epoch of this process ended

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = state_dict.get("epochs")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epochs is not None:
            trainer.fit_loop.max_epochs = self.epochs
        self._batches, self._started, self._middle, self._epoch_ended = 0, time.perf_counter(), None, None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._batches, self._last = self._batches + 1, time.perf_counter()
        if self._middle is None and self._batches >= trainer.num_training_batches // 2:
            self._middle = (self._batches, self._last)

    def epoch_seconds(self, trainer: L.Trainer) -> float:
        """What one more epoch will take, from what this process has measured so far."""
        now = time.perf_counter()
        if self._epoch_ended is not None:
            return now - self._epoch_ended
        since_batches, since = (0, self._started)
        if self._middle is not None and self._batches > self._middle[0]:
            since_batches, since = self._middle
        per_batch = (self._last - since) / (self._batches - since_batches)
        return per_batch * trainer.num_training_batches + (now - self._last)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or not self._batches or not trainer.lr_scheduler_configs:
            return
        per_epoch = self.epoch_seconds(trainer)
        self._epoch_ended = time.perf_counter()
        planned = trainer.max_epochs if self.epochs is None else self.epochs
        done = trainer.current_epoch + 1  # the epoch ending now is not counted in current_epoch yet
        # negative once the Timer has cut an epoch short: no more epochs then, but never fewer than done
        remaining = max(0.0, timer.time_remaining() or 0.0)
        fit = done + int(self.SAFETY * remaining // per_epoch)
        self.epochs = min(planned, trainer.strategy.broadcast(fit, src=0))
        if self.epochs >= planned:
            return
        logging.getLogger(__name__).info(
            "time budget: %d of %d epochs fit (%.1f s each); the LR schedule now ends with epoch %d",
            self.epochs, trainer.max_epochs, per_epoch, self.epochs,
        )  # fmt: skip
        trainer.fit_loop.max_epochs = self.epochs
        config = trainer.lr_scheduler_configs[0]
        # the total as configure_optimizers counts it: Lightning's estimate follows fit_loop.max_epochs
        total = max(1, int(trainer.estimated_stepping_batches))
        config.scheduler = pl_module.lr_schedule(
            config.scheduler.optimizer, total, self.epochs, last_step=trainer.global_step - 1
        )
