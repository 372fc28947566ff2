"""One loader for params.yaml, used by `python -m tasks.<stage>`, by DVC (same command) and by the
Prefect flow. Every section is a pydantic model with extra="forbid"; a bad key or value becomes one
`ParamsError` line naming the file and the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

DEFAULT_PARAMS = Path("params.yaml")
TUNE_SECTION = "tune"  # `imgcls tune`'s settings: known here, checked by tasks.tuning.space.check_section
# (from flows/, so that no stage depends on tasks/tuning and the training code it imports)
M = TypeVar("M", bound=BaseModel)


class ParamsError(Exception):
    """A configuration problem, reported as a single line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Paths(Strict):
    """Where every stage reads and writes, relative to the project root (the working directory)."""

    inbox: str = "data/inbox"
    feedback: str = "data/feedback"
    store: str = "data/store"
    ingested: str = "data/manifests/ingested.parquet"
    cleaned: str = "data/manifests/cleaned.parquet"
    validated: str = "data/manifests/validated.parquet"
    split: str = "data/manifests/split.parquet"
    prepared: str = "data/prepared"
    train_dir: str = "artifacts/train"
    reports: str = "reports"
    cache: str = ".imgcls/cache"
    label_decisions: str = "data/label_decisions.csv"  # `imgcls review` decisions, applied by ingest

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str) -> str:
        """A local folder or a URL with a scheme fsspec knows (s3://bucket/prefix): docs/scaling.md."""
        from tasks.common.store import check_location  # the image stack only when params are checked

        return check_location(value)

    def report_dir(self, stage: str) -> Path:
        return Path(self.reports) / stage


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data


def _one_line(exc: ValidationError, file: Path, section: str) -> str:
    err = exc.errors()[0]
    # list positions read as in YAML paths: augment.transforms[2].name
    key = section + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    got = err.get("input")
    got_txt = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{file}: {key}: {err['msg']}{got_txt}{more}"


def parse_section(data: dict[str, Any], section: str, model: type[M], file: str | Path = DEFAULT_PARAMS) -> M:
    raw = data.get(section) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: {section}: must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_one_line(exc, Path(file), section)) from None


def stage_params_model(stage: str) -> type[BaseModel]:
    from tasks.stages import STAGES  # the stages import this module: resolved at call time

    return STAGES[stage].Params


def load_stage(stage: str, params_path: str | Path = DEFAULT_PARAMS) -> tuple[Any, Paths]:
    """Params of one stage plus the shared paths, validated. The whole file is checked so that a typo
    in another stage's section is caught before hours of training, not after."""
    data = validate_file(params_path)
    return parse_section(data, stage, stage_params_model(stage), params_path), parse_section(
        data, "paths", Paths, params_path
    )


def validate_file(params_path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    from tasks.stages import STAGES

    data = read_yaml(params_path)
    known = {"paths", "engine", TUNE_SECTION, *STAGES}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamsError(f"{params_path}: {unknown[0]}: unknown section (expected one of {', '.join(sorted(known))})")
    parse_section(data, "paths", Paths, params_path)
    engine_params = parse_engine(data, params_path)
    for stage in STAGES:
        if stage in data:
            parse_section(data, stage, stage_params_model(stage), params_path)
    from tasks.common import engine

    # the stages run next in this context use this file's engine (see tasks.common.engine.current)
    engine.use(engine_params)
    return data


def parse_engine(data: dict[str, Any], params_path: str | Path = DEFAULT_PARAMS):
    """The `engine:` section (tasks.common.engine.EngineParams), validated; defaults when absent."""
    from tasks.common.engine import SECTION, EngineParams

    return parse_section(data, SECTION, EngineParams, params_path)


def load_engine(params_path: str | Path = DEFAULT_PARAMS):
    """The engine settings of a params file (IMGCLS_DASK_ADDRESS is applied by engine.current())."""
    return parse_engine(read_yaml(params_path), params_path)


OVERRIDE_DIR = "params_override"  # under paths.cache: the merged files `--params-override` runs read


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged over `base`: mappings key by key, anything else (lists included) replaced."""
    merged = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both else value
    return merged


def merge_override(params_path: str | Path, override_path: str | Path, folder: str | Path) -> Path:
    """The params file a run with `--params-override` reads: `override_path`'s sections (e.g. the
    `train:` section `imgcls tune` writes) merged over `params_path`, validated, and written to
    <folder>/params_override/params.<digest>.yaml. `params_path` itself is never changed. The override
    may not hold `paths:` (a run's inputs and outputs stay where DVC and the project expect them)."""
    import hashlib

    from tasks.common.atomic import write_text

    base, over = read_yaml(params_path), read_yaml(override_path)
    if "paths" in over:
        raise ParamsError(f"{override_path}: paths: an override may not move the project's files")
    text = yaml.safe_dump(deep_merge(base, over), sort_keys=False)
    target = Path(folder) / OVERRIDE_DIR / f"params.{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    write_text(text, target)
    try:
        validate_file(target)
    except ParamsError as exc:  # name the file the user wrote, not the merged copy
        raise ParamsError(str(exc).replace(str(target), f"{override_path} (over {params_path})", 1)) from None
    return target
