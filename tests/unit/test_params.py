from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tasks.common.entry import stage_main
from tasks.common.params import ParamsError, Paths, load_stage, validate_file
from tasks.ingest import run as ingest_run
from tasks.stages import STAGES

PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"
SECTIONS: dict[str, type[BaseModel]] = {"paths": Paths, **{name: stage.Params for name, stage in STAGES.items()}}

# Keys (section.field, sub-models dotted: validate.suspect_label.folds) whose value in params.yaml
# deliberately differs from the pydantic default, each with the reason. Anything else that differs is
# drift: a run without params.yaml (tests, the API, a notebook) would silently use other settings.
DELIBERATE_DIFFERENCES: dict[str, str] = {}


def test_typo_in_key_is_one_line_naming_key_and_file(project):
    path = project.write_params(ingest={"sourse": "x"})
    with pytest.raises(ParamsError) as err:
        load_stage("ingest", path)
    message = str(err.value)
    assert "\n" not in message
    assert "ingest.sourse" in message and "params.yaml" in message


def test_wrong_type_names_key_and_value(project):
    path = project.write_params(ingest={"sample_upscale": "big"})
    with pytest.raises(ParamsError, match=r"ingest\.sample_upscale: .*'big'"):
        load_stage("ingest", path)


def test_unknown_section_is_rejected(project):
    path = project.write_params(ingset={"source": "x"})
    with pytest.raises(ParamsError, match="ingset: unknown section"):
        validate_file(path)


def test_broken_yaml_is_one_line(project):
    (project.root / "params.yaml").write_text("ingest: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError) as err:
        validate_file(project.root / "params.yaml")
    assert "\n" not in str(err.value) and "not valid YAML" in str(err.value)


def test_stage_entry_prints_one_line_and_exits_2(project, capsys):
    project.write_params(paths={"store": 3.5, "unknown": 1})
    assert stage_main("ingest", ingest_run, []) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params.yaml: paths.") and "\n" not in err


def test_defaults_apply_when_section_missing(project):
    path = project.write_params(paths={"store": "elsewhere"})
    params, paths = load_stage("ingest", path)
    assert params.source == "sample:digits" and paths.store == "elsewhere"


def _leaves(model: BaseModel, prefix: str):
    """(dotted key, value) of every field, descending into sub-models (lists and dicts are values)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _unset(model: BaseModel, prefix: str):
    """Dotted keys the file left out (so they take the default without saying so)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name not in model.model_fields_set:
            yield f"{prefix}{name}"
        elif isinstance(value, BaseModel):
            yield from _unset(value, f"{prefix}{name}.")


def _compare_with_defaults(data: dict) -> tuple[dict[str, tuple], list[str]]:
    """Keys whose validated params.yaml value differs from the default (-> (yaml, default)), and keys
    params.yaml does not spell out."""
    differ, missing = {}, []
    for section, model in SECTIONS.items():
        given, default = model.model_validate(data.get(section) or {}), model()
        defaults = dict(_leaves(default, f"{section}."))
        differ |= {
            key: (value, defaults[key]) for key, value in _leaves(given, f"{section}.") if value != defaults[key]
        }
        missing += _unset(given, f"{section}.")
    return differ, missing


def test_params_yaml_values_are_the_pydantic_defaults_or_documented_differences():
    data = yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8"))
    differ, missing = _compare_with_defaults(data)
    assert not missing, f"params.yaml leaves out {missing}: spell every setting out"
    undocumented = {key: pair for key, pair in differ.items() if key not in DELIBERATE_DIFFERENCES}
    assert not undocumented, f"params.yaml (left) differs from the pydantic default (right): {undocumented}"
    stale = sorted(set(DELIBERATE_DIFFERENCES) - set(differ))
    assert not stale, f"listed as deliberate differences but now equal (or not a key): {stale}"
    assert all(reason.strip() for reason in DELIBERATE_DIFFERENCES.values())


def test_the_comparison_sees_nested_values_and_left_out_keys():
    data = yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8"))
    data["validate"]["suspect_label"]["folds"] += 1
    data["augment"]["transforms"] = []
    del data["promote"]["floor"]
    del data["evaluate"]["baseline"]["cells"]
    differ, missing = _compare_with_defaults(data)
    assert {"validate.suspect_label.folds", "augment.transforms"} <= set(differ)
    assert differ["augment.transforms"][0] == []
    assert missing == ["evaluate.baseline.cells", "promote.floor"]
