"""Images -> feature vectors for grouping and uncertainty sampling.

Two embedders, the better one when it is there:
- a trained model (models.predictor.Predictor, or an ensemble of them): the input of its classifier
  layer, i.e. the penultimate features, and its class probabilities as well;
- no model: HOG (models.hog) at two cell sizes, projected by PCA. PCA is fitted on the labelled
  images when there are any (their variation is the one that matters for telling classes apart), else on
  the unlabelled images themselves.

Every file goes through tasks.common.images.decode with a pixel limit; a file that does not decode
comes back as (key, reason), never as an exception."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.hog import hog_features
from tasks.common.images import DecodeError, Source, decode, to_array

HOG_SIZE = 32  # images are resized to this before HOG: 4x4 cells of 8 px and 8x8 cells of 4 px
PCA_DIMS = 48  # enough for ~95 % of the HOG variance on Fashion-MNIST; k-means and kNN stay fast


@dataclass
class Decoded:
    """The images that decoded (uint8 [N, size, size, channels], in the order of `keys`) and the ones
    that did not (key -> one-line reason)."""

    keys: list[str]
    arrays: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)


def decode_all(sources: Iterable[tuple[str, Source]], size: int, channels: int, max_pixels: int) -> Decoded:
    """Decode and resize every (key, source); a source may also be an OSError from the store (a reason)."""
    keys, arrays, failed = [], [], {}
    for key, src in sources:
        if isinstance(src, OSError):
            failed[key] = f"{type(src).__name__}: {src}"[:200]
            continue
        try:
            arrays.append(to_array(decode(src, max_pixels=max_pixels), size, channels))
            keys.append(key)
        except (DecodeError, OSError, ValueError) as exc:
            failed[key] = str(exc)[:200] if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"[:200]
    empty = np.zeros((0, size, size, channels), dtype=np.uint8)
    return Decoded(keys, np.stack(arrays) if arrays else empty, failed)


# --- HOG + PCA ------------------------------------------------------------------------------------


def hog(images: np.ndarray) -> np.ndarray:
    """uint8 [N, HOG_SIZE, HOG_SIZE, C] -> float32 [N, F]: HOG of the grayscale image at a coarse grid
    (shape) and a fine one (texture, edges)."""
    gray = images.astype(np.float32).mean(axis=3) if images.shape[3] > 1 else images[..., 0].astype(np.float32)
    return np.hstack([hog_features(gray, 4, 9), hog_features(gray, 8, 9)])


class HogPca:
    """HOG features projected on the principal components of a reference set."""

    def __init__(self, dims: int = PCA_DIMS, seed: int = 0):
        self.dims, self.seed, self.pca, self.out_dims = dims, seed, None, 0

    def fit(self, images: np.ndarray) -> HogPca:
        from sklearn.decomposition import PCA

        features = hog(images)
        if len(features) < 3:  # no variance to speak of: the HOG features as they are
            self.pca, self.out_dims = None, features.shape[1]
            return self
        # PCA cannot have more components than samples - 1 (a handful of labelled images)
        dims = min(self.dims, len(features) - 1, features.shape[1])
        self.pca = PCA(n_components=dims, random_state=self.seed).fit(features)
        self.out_dims = self.pca.n_components_
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.out_dims), dtype=np.float32)
        features = hog(images)
        return (features if self.pca is None else self.pca.transform(features)).astype(np.float32)


def hog_pca_embed(unlabelled: np.ndarray, labelled: np.ndarray | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(unlabelled embeddings, labelled embeddings) with PCA fitted on the labelled images when there
    are at least two of them, else on the unlabelled ones."""
    have_labelled = labelled is not None and len(labelled) >= 2
    reference = labelled if have_labelled else unlabelled
    embedder = HogPca(seed=seed).fit(reference)
    dims = embedder.out_dims
    return (
        embedder.transform(unlabelled),
        embedder.transform(labelled) if labelled is not None else np.zeros((0, dims), np.float32),
    )


# --- a trained model ------------------------------------------------------------------------------


def _members(predictor) -> list:
    """An EnsemblePredictor (models.ensemble) is its network members (a HOG + linear member has no
    penultimate layer); a Predictor is itself."""
    return [m for m in getattr(predictor, "members", [predictor]) if hasattr(m, "network")]


def penultimate_features(predictor, images: np.ndarray) -> np.ndarray:
    """What each network feeds its classifier layer (timm's get_classifier(), which our own nets have
    too), captured by a forward hook while the predictor runs as usual (same normalization, same
    test-time flip: the views' features are averaged like their probabilities). An ensemble's members'
    features are put side by side."""
    parts = []
    for member in _members(predictor):
        captured: list[np.ndarray] = []
        layer = member.network.get_classifier()
        handle = layer.register_forward_hook(
            lambda _m, inputs, _out, into=captured: into.append(inputs[0].detach().flatten(1).float().cpu().numpy())
        )
        try:
            member.predict_proba(images)
        finally:
            handle.remove()
        views = 2 if member.test_time_flip else 1
        batches = [np.mean(captured[i : i + views], axis=0) for i in range(0, len(captured), views)]
        parts.append(np.concatenate(batches) if batches else np.zeros((0, 0), np.float32))
    return np.hstack(parts).astype(np.float32)


def model_embed(predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, class probabilities) of uint8 images at the model's input size."""
    if len(images) == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, len(predictor.classes)), np.float32)
    return penultimate_features(predictor, images), predictor.predict_proba(images)


def model_input(predictor) -> tuple[int, int]:
    """(image_size, channels) the model's images are decoded to."""
    return int(predictor.image_size), int(predictor.channels)


def keys_in_order(decoded: Decoded, wanted: Sequence[str]) -> list[int]:
    """Positions in decoded.keys of the `wanted` keys that decoded."""
    where = {k: i for i, k in enumerate(decoded.keys)}
    return [where[k] for k in wanted if k in where]
