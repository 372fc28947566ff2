"""Inference without Lightning or MLflow: a network, its class names and input stats, applied to
uint8 NHWC arrays already at the training size. Used by evaluate, the pyfunc model and predict.
Loads from a saved model directory (safetensors weights) or a Lightning checkpoint (weights_only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.contract import StatsInput
from models.networks import build_network
from tasks.common.errors import UserError

# The files a saved model directory holds (the pyfunc model keeps them under artifacts/).
WEIGHTS, STATS, CLASSES, NETWORK = "weights.safetensors", "stats.json", "classes.json", "network.json"


@dataclass
class Predictor(StatsInput):
    network: nn.Module
    classes: list[str]
    # {"image_size", "channels", "mean", "std"} on the 0..1 scale, and "test_time_flip" (absent in models
    # saved before it existed: False), as written by augment; "temperature" as fitted by train
    # (models/calibration.py; absent in models saved before it existed: 1.0, no scaling)
    stats: dict
    batch_size: int = 256

    def __post_init__(self) -> None:
        self.network.eval()
        channels = int(self.stats["channels"])
        # Normalize(mean, std, max_pixel_value=255), as in eval.json
        self._mean = np.asarray(self.stats["mean"], dtype=np.float32).reshape(1, 1, 1, channels) * 255.0
        self._std = np.asarray(self.stats["std"], dtype=np.float32).reshape(1, 1, 1, channels) * 255.0
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"stats temperature must be a finite number > 0, got {self.stats['temperature']!r}")

    @property
    def test_time_flip(self) -> bool:
        return bool(self.stats.get("test_time_flip", False))

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of each view: the image and, with test_time_flip, its mirror (flip along the width axis)."""
        views = [self.network(x).float()]
        if self.test_time_flip:
            views.append(self.network(x.flip(3)).float())
        return views

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over the views of softmax(logits / temperature); T = 1 divides by nothing."""
        t = self.temperature
        probs = [torch.softmax(z if t == 1.0 else z / t, dim=1) for z in self._views(x)]
        return probs[0] if len(probs) == 1 else (probs[0] + probs[1]) / 2

    def _batches(self, images: np.ndarray):
        """(start, normalized NCHW batch on the network's device) over uint8 NHWC `images`."""
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected uint8 images of shape [N, {', '.join(map(str, expected))}], got {images.shape}")
        device = next(self.network.parameters()).device
        for start in range(0, len(images), self.batch_size):
            chunk = (images[start : start + self.batch_size].astype(np.float32) - self._mean) / self._std
            yield start, torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))).to(device)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] (H = W = image_size, C = channels) -> float [N, num_classes]: softmax of
        the logits divided by the model's temperature; with test_time_flip the mean over the image and
        its mirror."""
        images = np.asarray(images)
        out = np.empty((len(images), len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for start, x in self._batches(images):
                out[start : start + len(x)] = self._probabilities(x).cpu().numpy()
        return out

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [views, N, num_classes]: the raw logits (no temperature) of each view predict_proba
        averages (1 view, or 2 with test_time_flip); what models.calibration fits the temperature on."""
        images = np.asarray(images)
        views = 2 if self.test_time_flip else 1
        out = np.empty((views, len(images), len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for start, x in self._batches(images):
                for v, z in enumerate(self._views(x)):
                    out[v, start : start + len(x)] = z.cpu().numpy()
        return out


def save_model_files(
    target: str | Path, network_name: str, network: nn.Module, classes: list[str], stats: dict
) -> dict[str, Path]:
    """Write the four files a Predictor is made of into `target`; returns name -> path."""
    from safetensors.torch import save_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "weights": target / WEIGHTS,
        "stats": target / STATS,
        "classes": target / CLASSES,
        "network": target / NETWORK,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(files["weights"]))
    files["stats"].write_text(json.dumps(stats), encoding="utf-8")
    files["classes"].write_text(json.dumps(list(classes)), encoding="utf-8")
    files["network"].write_text(
        json.dumps({"network": network_name, "num_classes": len(classes), "in_chans": int(stats["channels"])}),
        encoding="utf-8",
    )
    return files


def predictor_from_files(weights: str | Path, stats: str | Path, classes: str | Path, network: str | Path) -> Predictor:
    from safetensors.torch import load_file

    config = json.loads(Path(network).read_text(encoding="utf-8"))
    net = build_network(config["network"], int(config["num_classes"]), int(config["in_chans"]))
    net.load_state_dict(load_file(str(weights)))
    return Predictor(
        net, json.loads(Path(classes).read_text(encoding="utf-8")), json.loads(Path(stats).read_text(encoding="utf-8"))
    )


def predictor_from_checkpoint(path: str | Path) -> Predictor:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hp = checkpoint["hyper_parameters"]
    net = build_network(hp["network"], len(hp["classes"]), int(hp["stats"]["channels"]))
    prefix = "network."
    net.load_state_dict({k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return Predictor(net, list(hp["classes"]), dict(hp["stats"]))


def load_predictor(model_dir_or_ckpt: str | Path) -> Predictor:
    """A .ckpt file, a directory holding the four model files, a saved pyfunc model (files under
    artifacts/), or a train_dir (its model/ folder); an ensemble (models/ensemble.py) in any of these
    places (weights.json, under artifacts/ensemble/ in a pyfunc) loads as an EnsemblePredictor."""
    from models.ensemble import ENSEMBLE_DIR, is_ensemble_dir, load_ensemble

    path = Path(model_dir_or_ckpt)
    if path.is_file() and path.suffix == ".ckpt":
        return predictor_from_checkpoint(path)
    for folder in (path, path / "artifacts" / ENSEMBLE_DIR, path / "model" / "artifacts" / ENSEMBLE_DIR):
        if is_ensemble_dir(folder):
            return load_ensemble(folder)
    for folder in (path, path / "artifacts", path / "model" / "artifacts"):
        if (folder / WEIGHTS).is_file():
            return predictor_from_files(folder / WEIGHTS, folder / STATS, folder / CLASSES, folder / NETWORK)
    raise UserError(f"{path}: not a checkpoint (.ckpt) or a saved model directory (no {WEIGHTS} found)")
