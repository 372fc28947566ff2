"""The LightningModule: a network from models.networks, cross-entropy with label smoothing and
optional class weights, AdamW or SGD, a per-step OneCycle or warmup+cosine schedule, accuracy and
macro-F1. Hyperparameters hold everything needed to rebuild the network for inference (name, class
names, input stats), so a checkpoint alone is enough for models.predictor. Under DDP every logged
figure is over all ranks: the losses with sync_dist (one all-reduce per epoch, as they are logged
on_epoch only), the torchmetrics by their own sync."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.networks import build_network


class ImageClassifier(L.LightningModule):
    def __init__(
        self,
        network: str,
        classes: list[str],
        stats: dict,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        scheduler: str = "onecycle",
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.1,
        class_weights: list[float] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        # logged by tasks.train itself, flattened; the class list would not fit an MLflow param
        self.save_hyperparameters(logger=False)
        num_classes = len(classes)
        self.network = build_network(network, num_classes, int(stats["channels"]))
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), persistent=False)
        else:
            self.class_weights = None
        # validate_args=False: the argument checks read values back from the device (torch.unique),
        # a GPU sync every step that cost a third of the throughput on an H100 (BENCHMARKS.md)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_f1 = MulticlassF1Score(num_classes, average="macro", validate_args=False)

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.network.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        # update(), not forward(): only the epoch value is logged, and forward() would also compute each
        # batch's own accuracy (77 of the 165 tensor ops a step that Lightning adds to a plain loop)
        self.train_acc.update(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.log("val/loss", self._loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/macro_f1", self.val_f1, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = self.lr_schedule(optimizer, total, max(1, self.trainer.max_epochs or 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    def lr_schedule(self, optimizer, total: int, epochs: int, last_step: int = -1):
        """The per-step schedule over `total` optimizer steps in `epochs` epochs. last_step >= 0: a
        schedule rebuilt mid-run (models.callbacks.FitScheduleToTime), continuing after that step."""
        hp = self.hparams
        warmup = min(total - 1, int(total * hp.warmup_epochs / epochs))
        # OneCycleLR needs at least two steps in each phase (it divides by their length)
        if hp.scheduler == "onecycle" and total >= 4:
            pct = min(0.5, max(warmup / total, 2.0 / total))
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total, pct_start=pct, last_epoch=last_step
            )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total), last_epoch=last_step)


class WarmupCosine:
    """Linear warmup, then cosine to zero: LambdaLR's factor. A class, not a closure, so LambdaLR's
    state_dict saves `total` with the checkpoint and a resumed run keeps a schedule rebuilt mid-run."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
