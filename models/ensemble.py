"""An ensemble of saved models that predicts like one Predictor: the weighted mean of its members'
calibrated probabilities (linear pooling), with the weights fitted on the val split by `fit_weights`.

A saved ensemble is a directory: weights.json ({"kind": "imgcls-ensemble", "members": [folder, ...],
"weights": [w, ...], "pooling": "linear"} plus free-form "info") and one sub-folder per member holding
the usual four model files (models/predictor.py), or, for the classical baseline as a member, a HOG +
linear classifier saved as arrays (models/hog.py: hog.json + linear.safetensors; nothing is unpickled).
Shipped inside the pyfunc (numpy and torch only: no scipy)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.hog import HOG_MODEL_FILE, HOG_MODEL_FILES, HogLinearPredictor, load_hog_linear
from models.predictor import CLASSES, NETWORK, STATS, WEIGHTS, Predictor, predictor_from_files
from tasks.common.errors import UserError

ENSEMBLE_FILE = "weights.json"
ENSEMBLE_DIR = "ensemble"  # its artifact name in the pyfunc model: the folder is artifacts/ensemble/
KIND = "imgcls-ensemble"
MODEL_FILES = (WEIGHTS, STATS, CLASSES, NETWORK)


@dataclass
class EnsemblePredictor:
    members: list[Predictor | HogLinearPredictor]
    weights: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        self.names = list(self.names) or [f"m{i}" for i in range(len(self.members))]
        if not self.members:
            raise UserError("an ensemble needs at least one member model")
        if len(self.weights) != len(self.members) or len(self.names) != len(self.members):
            raise UserError(
                f"an ensemble of {len(self.members)} members needs as many weights, got {len(self.weights)}"
            )
        if not (np.all(np.isfinite(self.weights)) and np.all(self.weights >= 0) and self.weights.sum() > 0):
            raise UserError(f"ensemble weights must be finite, >= 0 and not all 0, got {self.weights.tolist()}")
        self.weights = self.weights / self.weights.sum()
        check_members(self.members, self.names)

    @property
    def classes(self) -> list[str]:
        return list(self.members[0].classes)

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def channels(self) -> int:
        return self.members[0].channels

    @property
    def stats(self) -> dict:
        """The input spec every member shares (size, channels; mean/std of the first member)."""
        first = self.members[0].stats
        return {k: first[k] for k in ("image_size", "channels", "mean", "std") if k in first}

    @property
    def network(self):
        """What code written for one network (ONNX export) reaches for: a clear refusal, not an AttributeError."""
        raise UserError("this model is an ensemble of several networks: ONNX export handles single models only")

    def member_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 [members, N, num_classes]: each member's calibrated probabilities."""
        return np.stack([m.predict_proba(images) for m in self.members])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, C] -> float32 [N, num_classes]: sum_i w_i * p_i (linear pooling)."""
        out = np.zeros((len(np.asarray(images)), len(self.classes)), dtype=np.float64)
        for w, member in zip(self.weights, self.members):
            if w > 0:
                out += w * member.predict_proba(images)
        return out.astype(np.float32)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [1, N, num_classes]: log of the pooled probabilities (one view; softmax gives them back)."""
        return np.log(np.clip(self.predict_proba(images), 1e-12, None))[None]


def check_members(members: list, names: list[str]) -> None:
    """Every member must predict the same classes, in the same order, from the same input size."""
    first = members[0]
    for name, m in zip(names[1:], members[1:]):
        if list(m.classes) != list(first.classes):
            raise UserError(
                f"ensemble member {name} knows classes {list(m.classes)} but {names[0]} knows {list(first.classes)}"
            )
        if (m.image_size, m.channels) != (first.image_size, first.channels):
            raise UserError(
                f"ensemble member {name} takes {m.image_size}x{m.image_size}x{m.channels} images but {names[0]} "
                f"takes {first.image_size}x{first.image_size}x{first.channels}"
            )


def member_files(folder: str | Path) -> tuple[str, ...]:
    """The files that make one member: a HOG + linear model's two, or a CNN's four."""
    return HOG_MODEL_FILES if (Path(folder) / HOG_MODEL_FILE).is_file() else MODEL_FILES


def load_member(folder: str | Path) -> Predictor | HogLinearPredictor:
    folder = Path(folder)
    if (folder / HOG_MODEL_FILE).is_file():
        return load_hog_linear(folder)
    return predictor_from_files(*(folder / f for f in MODEL_FILES))


def is_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def load_ensemble(path: str | Path) -> EnsemblePredictor:
    path = Path(path)
    try:
        spec = json.loads((path / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path / ENSEMBLE_FILE}: not readable as JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("kind") != KIND or spec.get("pooling", "linear") != "linear":
        raise UserError(f"{path / ENSEMBLE_FILE}: not an imgcls ensemble (kind {KIND!r}, linear pooling)")
    members, names = [], [str(n) for n in spec.get("members", [])]
    for name in names:
        folder = (path / name).resolve()
        if folder.parent != path.resolve() or not any((folder / f).is_file() for f in (WEIGHTS, HOG_MODEL_FILE)):
            raise UserError(f"{path / ENSEMBLE_FILE}: member {name!r} is not a model folder beside it")
        members.append(load_member(folder))
    return EnsemblePredictor(members, spec.get("weights", []), names)


def save_ensemble(target: str | Path, member_dirs: list[str | Path], weights, info: dict | None = None) -> Path:
    """Write an ensemble directory at `target` (missing or empty): each member's model files (member_files)
    copied into m0/, m1/, ... and weights.json. Members are checked (classes, input size) by loading them."""
    import shutil

    target = Path(target)
    names = [f"m{i}" for i in range(len(member_dirs))]
    # loading checks that each member is a complete model and that they agree
    EnsemblePredictor([load_member(d) for d in member_dirs], weights, names)
    target.mkdir(parents=True, exist_ok=True)
    for name, source in zip(names, member_dirs):
        (target / name).mkdir()
        for f in member_files(source):
            shutil.copyfile(Path(source) / f, target / name / f)
    w = np.asarray(weights, dtype=np.float64)
    spec = {"kind": KIND, "members": names, "weights": (w / w.sum()).tolist(), "pooling": "linear"}
    (target / ENSEMBLE_FILE).write_text(json.dumps(spec | {"info": info or {}}, indent=2), encoding="utf-8")
    return target


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))


def fit_weights(member_proba: np.ndarray, y: np.ndarray, iterations: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """Weights w >= 0, sum(w) = 1 minimizing the log loss of sum_i w_i p_i on labelled (val) data.
    member_proba: [members, N, classes]; y: [N] class indices. The loss is convex in w; this is
    exponentiated gradient descent on the simplex (pure numpy), with a step halved whenever it fails to
    improve. Deterministic; equal weights when there is nothing to fit on."""
    p = np.asarray(member_proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    m = p.shape[0]
    w = np.full(m, 1.0 / m)
    if m == 1 or len(y) == 0:
        return w
    q = np.clip(p[:, np.arange(len(y)), y], 1e-12, None)  # [members, N]: each member's p(true class)

    def loss(weights: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(weights @ q, 1e-300, None))))

    current, step = loss(w), 1.0
    for _ in range(iterations):
        grad = -(q / np.clip(w @ q, 1e-300, None)).mean(axis=1)
        proposal = w * np.exp(-step * (grad - grad.min()))
        proposal /= proposal.sum()
        new = loss(proposal)
        if new <= current:
            improved = current - new
            w, current = proposal, new
            step = min(step * 1.5, 1e3)
            if improved < tol:
                break
        else:
            step /= 2
            if step < 1e-12:
                break
    w[w < 1e-6] = 0.0
    return w / w.sum()
