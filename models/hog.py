"""Histogram-of-oriented-gradients features (Dalal & Triggs), in numpy: the classical image features
behind the evaluate baseline, validate's suspect-label model and the unlabelled-image embedding; and a
HOG + linear classifier saved as plain arrays, which an ensemble ships as a member (models/ensemble.py).
Shipped with the pyfunc (numpy, pillow and safetensors only)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.contract import StatsInput
from tasks.common.errors import UserError


def hog_features(gray: np.ndarray, cells: int, orientations: int) -> np.ndarray:
    """HOG of a batch of square grayscale images [N, S, S] (S divisible by `cells`): gradient
    magnitude voted into `orientations` bins per cell with linear interpolation between bin centres,
    then 2x2-cell blocks (stride one cell) normalized with L2-Hys. Returns float32 [N, F]."""
    gray = gray.astype(np.float32)
    n, size, _ = gray.shape
    cell = size // cells
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, :, 1:-1] = gray[:, :, 2:] - gray[:, :, :-2]
    gy[:, 1:-1, :] = gray[:, 2:, :] - gray[:, :-2, :]
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / (np.pi / orientations) - 0.5  # in units of bins
    lower = np.floor(position)
    upper_weight = position - lower
    lower = lower.astype(int) % orientations
    histogram = np.zeros((n, cells, cells, orientations), dtype=np.float32)
    for b in range(orientations):
        vote = magnitude * ((lower == b) * (1 - upper_weight) + ((lower + 1) % orientations == b) * upper_weight)
        histogram[..., b] = vote.reshape(n, cells, cell, cells, cell).sum(axis=(2, 4))
    blocks = np.concatenate(
        [histogram[:, i : cells - 1 + i, j : cells - 1 + j] for i in (0, 1) for j in (0, 1)], axis=-1
    )
    blocks /= np.sqrt((blocks**2).sum(-1, keepdims=True) + 1e-6)
    blocks = np.minimum(blocks, 0.2)
    blocks /= np.sqrt((blocks**2).sum(-1, keepdims=True) + 1e-6)
    return blocks.reshape(n, -1)


def grayscale(batch: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC -> float32 [N, size, size] luminance (ITU-R 601), bilinear-resized when the images have
    another size."""
    from PIL import Image

    batch = np.asarray(batch, dtype=np.float32)
    gray = batch[..., 0] if batch.shape[-1] == 1 else batch @ np.array([0.299, 0.587, 0.114], np.float32)
    if gray.shape[1:] == (size, size):
        return gray
    return np.stack(
        [np.asarray(Image.fromarray(g, mode="F").resize((size, size), Image.Resampling.BILINEAR)) for g in gray]
    )


@dataclass
class HogSpec:
    """How images become HOG features: grayscale, resized to `size` (a whole number of pixels per cell)."""

    size: int
    cells: int
    orientations: int

    @property
    def length(self) -> int:
        """Features per image: 2x2-cell blocks at a stride of one cell, `orientations` bins per cell."""
        return (self.cells - 1) ** 2 * 4 * self.orientations

    def features(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.length), np.float32)
        return hog_features(grayscale(images, self.size), self.cells, self.orientations)


# A HOG + linear classifier saved as arrays, so an ensemble can ship it without pickling scikit-learn.
HOG_MODEL_FILE, HOG_LINEAR_FILE = "hog.json", "linear.safetensors"
HOG_MODEL_FILES = (HOG_MODEL_FILE, HOG_LINEAR_FILE)
HOG_KIND = "imgcls-hog-linear"


@dataclass
class HogLinearPredictor(StatsInput):
    """softmax((hog(image) @ coef.T + intercept) / temperature): a linear classifier (scikit-learn's
    LinearSVC or logistic regression, folded into arrays) on HOG features, with the same predict_proba
    contract as models.predictor.Predictor. Input: uint8 NHWC at `image_size` x `image_size` x `channels`
    (the size the CNN members take; the HOG spec resizes on its own)."""

    spec: HogSpec
    coef: np.ndarray  # [classes, features]
    intercept: np.ndarray  # [classes]
    classes: list[str]
    stats: dict  # {"image_size", "channels", "temperature"}: the input the ensemble feeds every member

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [1, N, classes] (one view, as Predictor.logits), before the temperature."""
        x = self.spec.features(np.asarray(images))
        return (x @ self.coef.T + self.intercept).astype(np.float32)[None]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        z = self.logits(images)[0].astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def save_hog_linear(target: str | Path, model: HogLinearPredictor) -> Path:
    from safetensors.numpy import save_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "coef": np.ascontiguousarray(model.coef, np.float32),
            "intercept": np.ascontiguousarray(model.intercept, np.float32),
        },
        str(target / HOG_LINEAR_FILE),
    )
    spec = {"kind": HOG_KIND, "hog": asdict(model.spec), "classes": list(model.classes), "stats": model.stats}
    (target / HOG_MODEL_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return target


def load_hog_linear(folder: str | Path) -> HogLinearPredictor:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    try:
        spec = json.loads((folder / HOG_MODEL_FILE).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / HOG_LINEAR_FILE))
        model = HogLinearPredictor(
            HogSpec(**{k: int(spec["hog"][k]) for k in ("size", "cells", "orientations")}),
            arrays["coef"],
            arrays["intercept"],
            [str(c) for c in spec["classes"]],
            dict(spec["stats"]),
        )
        numbers = (model.temperature, model.image_size, model.channels)  # each read as a number, or refused
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise UserError(f"{folder}: not a readable HOG + linear model ({type(exc).__name__}: {exc})") from None
    if spec.get("kind") != HOG_KIND:  # spec is a dict here: spec["hog"] above read it as one
        raise UserError(f"{folder / HOG_MODEL_FILE}: not a HOG + linear model (kind {HOG_KIND!r})")
    hog = model.spec
    if not (hog.cells >= 2 and hog.orientations >= 2 and hog.size >= 2 * hog.cells and hog.size % hog.cells == 0):
        raise UserError(f"{folder / HOG_MODEL_FILE}: HOG spec {asdict(hog)} is not one the baseline makes")
    classes, features = len(model.classes), hog.length
    if model.coef.shape != (classes, features) or model.intercept.shape != (classes,):
        raise UserError(
            f"{folder}: coef {model.coef.shape} / intercept {model.intercept.shape} do not fit "
            f"{classes} classes x {features} HOG features"
        )
    if not (np.isfinite(numbers[0]) and numbers[0] > 0):
        raise UserError(f"{folder}: temperature must be a finite number > 0, got {numbers[0]!r}")
    return model
