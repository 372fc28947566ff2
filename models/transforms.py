"""Augmentation specs: params.yaml lists albumentations transforms by class name and arguments; this
module checks such a list (unknown names and arguments get close-match suggestions), builds the train
and eval pipelines, saves them as albumentations JSON in the prepared store and loads them back.

albumentations is imported lazily: importing it phones PyPI for an update check unless
NO_ALBUMENTATIONS_UPDATE is set, and loading params must neither touch the network nor take seconds."""

from __future__ import annotations

import difflib
import inspect
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from tasks.common.prepared import EVAL_SPEC, TRAIN_SPEC

# Transform classes a params list may not name: abstract bases, 3D/volume ops, tensor conversion
# (the datamodule converts) and Normalize (appended by us from the train statistics). Lambda cannot
# be serialized to JSON.
_NOT_USER_TRANSFORMS = {
    "BasicTransform",
    "DualTransform",
    "ImageOnlyTransform",
    "NoOp",
    "Transform3D",
    "Lambda",
    "ToTensorV2",
    "ToTensor3D",
    "Normalize",
    "FromFloat",
    "ToFloat",
}


def albumentations():
    """The albumentations module, imported without its network update check."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


@lru_cache(maxsize=1)
def transform_classes() -> dict[str, type]:
    A = albumentations()
    return {
        name: obj
        for name in dir(A)
        if isinstance(obj := getattr(A, name), type)
        and issubclass(obj, A.BasicTransform)
        and name not in _NOT_USER_TRANSFORMS
        and not name.endswith("3D")
    }


def _arguments(cls: type) -> dict[str, inspect.Parameter]:
    return {
        n: p
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _error(loc: tuple, message: str, entry: Any) -> ValidationError:
    # a ValidationError raised inside a pydantic validator is merged into the outer one with its own
    # loc, so the params loader can name `augment.transforms[2].name` exactly
    return ValidationError.from_exception_data(
        "transforms", [InitErrorDetails(type=PydanticCustomError("transform", message), loc=loc, input=entry)]
    )


def check_specs(specs: list[dict[str, Any]], image_size: int, field: str = "transforms") -> list[dict[str, Any]]:
    """Validate a params list of {name: <class>, <arg>: value}; return it with `size` filled in for
    crops that need one (RandomResizedCrop) so that changing image_size alone keeps the spec valid."""
    classes = transform_classes()
    checked = []
    for i, entry in enumerate(specs):
        name = entry.get("name")
        if not isinstance(name, str):
            raise _error((field, i, "name"), "each transform needs `name: <albumentations class>`", entry)
        if name not in classes:
            raise _error(
                (field, i, "name"),
                f"unknown transform {name!r}{_suggest(name, classes) or ' (not an albumentations 2 transform)'}",
                entry,
            )
        allowed = _arguments(classes[name])
        args = {k: v for k, v in entry.items() if k != "name"}
        for key in args:
            if key not in allowed:
                hint = _suggest(key, allowed) or f" (arguments: {', '.join(allowed)})"
                raise _error((field, i, key), f"unknown argument {key!r} of {name}{hint}", entry)
        if "size" in allowed and allowed["size"].default is inspect.Parameter.empty and "size" not in args:
            args["size"] = [image_size, image_size]
        try:
            classes[name](**args)
        except Exception as exc:  # albumentations validates its arguments with its own pydantic schema
            raise _error(*_construction_error(field, i, name, exc), entry) from None
        checked.append({"name": name, **args})
    return checked


def _construction_error(field: str, i: int, name: str, exc: Exception) -> tuple[tuple, str]:
    cause = exc.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        err = cause.errors()[0]
        arg = str(err["loc"][0]) if err["loc"] else "name"
        return (field, i, arg), f"{name}: {err['msg']} (got {err.get('input')!r})"
    return (field, i, "name"), f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def build(specs: list[dict[str, Any]], mean: list[float], std: list[float]):
    """Train pipeline: the user's transforms, then Normalize with the train statistics (0..1 scale)."""
    A = albumentations()
    classes = transform_classes()
    steps = [classes[s["name"]](**{k: v for k, v in s.items() if k != "name"}) for s in specs]
    return A.Compose([*steps, _normalize(mean, std)])


def build_eval(mean: list[float], std: list[float]):
    return albumentations().Compose([_normalize(mean, std)])


def _normalize(mean: list[float], std: list[float]):
    return albumentations().Normalize(mean=list(mean), std=list(std), max_pixel_value=255.0)


def save(compose, target: str | Path) -> Path:
    albumentations().save(compose, str(target), data_format="json")
    return Path(target)


def load_transforms(prepared_dir: str | Path):
    """(train_tf, eval_tf) of a prepared store: albumentations Composes taking uint8 HxWxC and giving
    float32 HxWxC normalized with the train statistics. Used by the datamodule and the pyfunc model."""
    A = albumentations()
    prepared_dir = Path(prepared_dir)
    return (
        A.load(str(prepared_dir / TRAIN_SPEC), data_format="json"),
        A.load(str(prepared_dir / EVAL_SPEC), data_format="json"),
    )
