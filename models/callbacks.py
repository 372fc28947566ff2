"""Lightning callbacks used by train (kept out of networks.py: the shipped model must not need lightning)."""

from __future__ import annotations

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
        import time

        self.started = time.perf_counter()
