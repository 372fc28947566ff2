"""Histogram-of-oriented-gradients features (Dalal & Triggs), in numpy: the classical image features
behind the evaluate baseline and validate's suspect-label model."""

from __future__ import annotations

import numpy as np


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
