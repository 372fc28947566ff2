"""The `tune:` section of params.yaml and the search space it describes.

A search dimension names a field of the train stage's Params and either a range (`low`, `high`, `log`)
or a list of `choices`. Integer fields with an integer range are drawn as integers. Every value the
space can produce is checked against train's own Params up front, so a network name that does not
exist or a label_smoothing of 1 is one line before any trial runs, not a failed trial hours later."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tasks.common.params import Strict

# train fields a trial must not take from the space: where runs are recorded, how long a trial lasts
# (tune.epochs_per_trial), the device layout (one device per trial) and knobs that change nothing learnt
NOT_SEARCHABLE = frozenset(
    {
        "experiment",
        "epochs",
        "devices",
        "num_nodes",
        "strategy",
        "accelerator",
        "num_workers",
        "max_time_minutes",
        "checkpoint_every_n_steps",
        "limit_train_batches",
        "limit_val_batches",
        "calibrate",
        "pretrained_path",
    }
)
METRICS = ("val/acc", "val/macro_f1")  # logged by models.module every validation epoch; maximised


class Dimension(Strict):
    """One searched train setting: a range (low, high, log) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # draw uniformly in log space (lr, weight_decay)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log:
                raise PydanticCustomError("dimension", "give either low/high (a range) or choices, not both")
            if not self.choices:
                raise PydanticCustomError("dimension", "choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise PydanticCustomError("dimension", "a range needs both low and high (or give choices)")
        if not self.low < self.high:
            raise PydanticCustomError("dimension", "low must be below high")
        if self.log and self.low <= 0:
            raise PydanticCustomError("dimension", "a log range needs low > 0")
        return self

    def is_int_range(self, field_annotation: Any) -> bool:
        return (
            self.choices is None
            and float(self.low).is_integer()
            and float(self.high).is_integer()
            and "int" in str(field_annotation)
            and "float" not in str(field_annotation)
        )


def _range(low: float, high: float, log: bool = False) -> Dimension:
    return Dimension(low=low, high=high, log=log)


def default_space() -> dict[str, Dimension]:
    return {
        "lr": _range(0.0003, 0.01, log=True),
        "weight_decay": _range(0.0001, 0.1, log=True),
        "batch_size": Dimension(choices=[64, 128, 256]),
        "label_smoothing": _range(0.0, 0.2),
        "network": Dimension(choices=["resnet_small", "resnet_tiny"]),
    }


class TuneParams(Strict):
    """`imgcls tune`: an Optuna study over train settings (docs/tuning.md). Not a stage: nothing in the
    pipeline reads it, and its result is a params file the user applies, never an edit of params.yaml."""

    study_name: str = Field("imgcls", min_length=1)  # the same name resumes the same study
    storage: str | None = None  # SQLAlchemy URL of the study; null: beside the MLflow store
    experiment: str = Field("imgcls-tune", min_length=1)  # MLflow experiment of the parent run and trials
    n_trials: int = Field(20, ge=1)  # trials added by one invocation
    timeout_minutes: float | None = Field(None, gt=0)  # wall-clock budget of one invocation
    epochs_per_trial: int = Field(15, ge=1)  # = train.epochs: a shorter horizon favours fast starters
    metric: Literal["val/acc", "val/macro_f1"] = "val/acc"  # maximised; best epoch of a trial counts
    pruner: Literal["median", "hyperband", "threshold", "none"] = "hyperband"
    pruner_startup_trials: int = Field(3, ge=0)  # median: trials that complete before any is pruned
    pruner_warmup_epochs: int = Field(1, ge=0)  # median / threshold: epochs before a trial may be pruned
    prune_below: float = Field(0.0, ge=0)  # threshold: prune a trial whose metric is below this
    seed: int = Field(0, ge=0, le=2**32 - 1)  # TPE sampler seed
    parallel: int = Field(1, ge=1)  # trials at once (threads of this process)
    space: dict[str, Dimension] = Field(default_factory=default_space)

    @field_validator("space")
    @classmethod
    def _searchable(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        from tasks.train import Params as TrainParams

        if not space:
            raise PydanticCustomError("space", "must name at least one train setting to search")
        for name in space:
            if name not in TrainParams.model_fields:
                raise PydanticCustomError("space", "{name}: not a train setting", {"name": name})
            if name in NOT_SEARCHABLE:
                raise PydanticCustomError("space", "{name}: not searchable (a trial sets it itself)", {"name": name})
        return space


def values_to_check(dimension: Dimension) -> list[Any]:
    return list(dimension.choices) if dimension.choices is not None else [dimension.low, dimension.high]


def check_space(tune: TuneParams, train: Any) -> None:
    """Raise ParamsError (one line naming tune.space.<key>) when a value the space can produce is not a
    valid train setting on top of `train` (the train section of the same params file)."""
    from pydantic import ValidationError

    from tasks.common.params import ParamsError
    from tasks.train import Params as TrainParams

    base = train.model_dump()
    for name, dimension in tune.space.items():
        for value in values_to_check(dimension):
            if dimension.is_int_range(TrainParams.model_fields[name].annotation):
                value = int(value)
            try:
                TrainParams.model_validate(base | {name: value})
            except ValidationError as exc:
                raise ParamsError(
                    f"tune.space.{name}: {value!r} is not a valid train.{name}: {exc.errors()[0]['msg']}"
                ) from None


def suggest(trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's train settings, drawn by the study's sampler."""
    from tasks.train import Params as TrainParams

    values: dict[str, Any] = {}
    for name, dimension in space.items():
        if dimension.choices is not None:
            values[name] = trial.suggest_categorical(name, dimension.choices)
        elif dimension.is_int_range(TrainParams.model_fields[name].annotation):
            values[name] = trial.suggest_int(name, int(dimension.low), int(dimension.high), log=dimension.log)
        else:
            values[name] = trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
    return values


def trial_params(train: Any, tune: TuneParams, values: dict[str, Any]) -> Any:
    """train's Params for one trial: params.yaml's train section, the drawn values over it, and what a
    trial fixes itself: tune.epochs_per_trial epochs, one device on one node, no calibration, its own
    experiment."""
    from tasks.train import Params as TrainParams

    fixed = {"epochs": tune.epochs_per_trial, "devices": 1, "calibrate": False, "experiment": tune.experiment}
    # one process per trial (train's multi-device settings, where this version of train has them)
    fixed |= {k: v for k, v in {"num_nodes": 1, "strategy": "auto"}.items() if k in TrainParams.model_fields}
    return TrainParams.model_validate(train.model_dump() | values | fixed)


def check_section(data: dict[str, Any], params_path) -> None:
    """The `tune:` section of a params file, when present, checked like a stage's (one ParamsError line)."""
    from tasks.common.params import TUNE_SECTION, parse_section

    if TUNE_SECTION in data:
        parse_section(data, TUNE_SECTION, TuneParams, params_path)
