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
