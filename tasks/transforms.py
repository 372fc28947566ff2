"""Augmentation pipelines declared in params.yaml as a list of albumentations transforms.

Each step is `{name: <albumentations class>, <argument>: value, ...}`. Steps are checked when params
load: an unknown transform or argument is one line naming it with close matches, so a typo never
silently does nothing (albumentations itself ignores unknown keyword arguments)."""
from __future__ import annotations

import difflib
import inspect
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

TRAIN_SPEC = "augment.json"
EVAL_SPEC = "eval.json"


@lru_cache(maxsize=1)
def transform_names() -> dict[str, type]:
    import albumentations as A

    return {
        name: obj for name, obj in vars(A).items()
        if inspect.isclass(obj) and issubclass(obj, A.BasicTransform) and not name.startswith("_")
        and not inspect.isabstract(obj) and name not in ("BasicTransform", "DualTransform", "ImageOnlyTransform")
    }


def _close(word: str, options: list[str]) -> str:
    matches = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def _accepted_arguments(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "args", "kwargs", "always_apply")]


class TransformStep(BaseModel):
    """One albumentations transform: its class name plus its keyword arguments."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_transform_and_arguments(self) -> "TransformStep":
        classes = transform_names()
        cls = classes.get(self.name)
        if cls is None:
            raise ValueError(f"unknown transform {self.name!r}{_close(self.name, sorted(classes))}")
        accepted = _accepted_arguments(cls)
        for key in self.arguments:
            if key not in accepted:
                raise ValueError(
                    f"{self.name}: unknown argument {key!r}{_close(key, accepted)}; accepted: {', '.join(accepted)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(**self.arguments)
        except Exception as exc:  # albumentations validates values with its own pydantic schemas
            first = str(exc).strip().splitlines()
            raise ValueError(f"{self.name}: {first[-1] if first else type(exc).__name__}") from None
        return self

    def build(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transform_names()[self.name](**self.arguments)


def compose(steps: list[TransformStep], mean: list[float] | None = None, std: list[float] | None = None, seed: int | None = None):
    """The steps, then Normalize when mean/std are given (that is how train and the model see pixels)."""
    import albumentations as A

    transforms = [step.build() for step in steps]
    if mean is not None:
        transforms.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return A.Compose(transforms, seed=seed)


def save_spec(pipeline, target: str | Path) -> None:
    """albumentations' own JSON format, written atomically."""
    import albumentations as A

    from tasks.atomic import atomic_path

    with atomic_path(target, suffix=".json") as tmp:
        A.save(pipeline, str(tmp), data_format="json")


def load_transforms(prepared_dir: str | Path):
    """(train, eval) pipelines exactly as augment wrote them: train can never disagree with augment."""
    import albumentations as A

    prepared_dir = Path(prepared_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (A.load(str(prepared_dir / TRAIN_SPEC), data_format="json"),
                A.load(str(prepared_dir / EVAL_SPEC), data_format="json"))
