import pytest

from tasks.common.entry import stage_main
from tasks.ingest import run as ingest_run
from tasks.common.params import ParamsError, load_stage, validate_file


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
