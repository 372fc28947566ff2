"""The stage table: the eight pipeline stages in pipeline order, name -> module. The flow, params
validation, the CLI and the wiring test read it; nobody imports a stage from its name as a string.
Stage modules are cheap to import (heavy libraries load inside run())."""

from __future__ import annotations

from types import ModuleType

from tasks import augment, clean, evaluate, ingest, promote, split, train, validate

STAGES: dict[str, ModuleType] = {
    "ingest": ingest,
    "clean": clean,
    "validate": validate,
    "split": split,
    "augment": augment,
    "train": train,
    "evaluate": evaluate,
    "promote": promote,
}
