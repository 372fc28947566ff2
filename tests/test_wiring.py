"""dvc.yaml, params.yaml and tasks/ must describe the same pipeline."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.common.params import Paths, validate_file
from tasks.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def project_imports(module: str) -> set[str]:
    """Project files (tasks/, models/) a module imports, transitively, read from the source."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        file = _module_file(name)
        if file is None or str(file) in seen:
            continue
        seen.add(str(file))
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            # the stage table is how params validation checks every section; a stage's outputs depend
            # only on what it imports itself, so the table does not pull every stage into its deps
            todo += [n for n in names if n.split(".")[0] in ("tasks", "models") and n != "tasks.stages"]
    return {str(Path(f).relative_to(ROOT)) for f in seen}


def test_every_stage_is_a_module_a_dvc_stage_and_a_params_section():
    for stage, module in STAGES.items():
        assert module.__name__ == f"tasks.{stage}", "the stage table maps each name to its own module"
        assert callable(module.run) and callable(module.main) and module.Params, stage
        assert stage in DVC, f"dvc.yaml has no stage {stage}"
        assert stage in PARAMS, f"params.yaml has no section {stage}"
    assert list(DVC) == list(STAGES), "dvc.yaml stages must be in pipeline order and named like tasks/"


@pytest.mark.parametrize("stage", list(DVC))
def test_dvc_stage_runs_its_module_with_its_params(stage):
    spec = DVC[stage]
    assert spec["cmd"] == f"${{python}} -m tasks.{stage}"
    assert {stage, "paths"} <= set(spec["params"])


@pytest.mark.parametrize("stage", list(DVC))
def test_dvc_deps_cover_every_imported_project_module(stage):
    deps = {d if isinstance(d, str) else next(iter(d)) for d in DVC[stage]["deps"]}
    needed = project_imports(f"tasks.{stage}") - {"tasks/__init__.py"}
    missing = {p for p in needed if not any(p == d or p.startswith(d + "/") for d in deps)}
    assert not missing, f"dvc.yaml {stage}: deps lack {sorted(missing)}"
    # by package: the stage module plus the folders of tasks/ it imports from. models/ may be named by
    # file (validate needs models/hog.py only, and must not rerun when a network changes) or whole
    # (promote lists it, as it runs the registered pyfunc rather than importing it)
    code_deps = {d for d in deps if d.startswith("tasks")}
    packages = {str(Path(p).parent) for p in needed if p != f"tasks/{stage}.py"} - {"models"}
    assert code_deps == {f"tasks/{stage}.py", *packages}, f"dvc.yaml {stage}: code deps {sorted(code_deps)}"


def test_dvc_paths_come_from_params():
    text = (ROOT / "dvc.yaml").read_text()
    used = set(re.findall(r"\$\{paths\.(\w+)\}", text))
    assert used <= set(Paths.model_fields), used - set(Paths.model_fields)
    tokens = re.findall(r"[\w./-]+", re.sub(r"\$\{[^}]*\}|#.*", "", text))
    for value in PARAMS["paths"].values():
        written = [t for t in tokens if t == value or t.startswith(value + "/")]
        assert not written, f"{value} is written in dvc.yaml instead of ${{paths.*}}"


def test_params_yaml_is_valid():
    validate_file(ROOT / "params.yaml")


def test_tasks_never_import_prefect():
    for file in (ROOT / "tasks").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+prefect", file.read_text(), re.M), file


def test_importing_stages_does_no_work(tmp_path):
    """No folders made, no tracking URI set, no torch loaded by importing a stage. (Validating
    augment's transforms imports albumentations, which loads torch: that is checking, not import.)"""
    code = (
        "import sys, os\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"import tasks.common.params\n"
        f"for s in {list(STAGES)!r}: __import__('tasks.' + s)\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
        "tasks.common.params.validate_file(sys.argv[1])\n"
        "assert 'MLFLOW_TRACKING_URI' not in os.environ\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "params.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_tasks_top_level_holds_only_the_stages():
    top = {p.stem for p in (ROOT / "tasks").glob("*.py")}
    assert top == {"__init__", "stages", *STAGES}, f"helpers belong in a sub-package: {sorted(top - set(STAGES))}"


def test_models_import_only_tasks_common():
    for file in (ROOT / "models").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tasks":
                assert node.module.startswith("tasks.common"), f"{file.name} imports {node.module}"


def test_shipped_model_code_imports_only_the_shipped_base():
    """The pyfunc ships models/ plus SHIPPED_BASE; its import closure must need nothing else of tasks/."""
    from models.pyfunc import SHIPPED_BASE

    used = {p for p in project_imports("models.pyfunc_entry") if p.startswith("tasks/")}
    assert used <= {"tasks/__init__.py", "tasks/common/__init__.py", *(f"tasks/{b}" for b in SHIPPED_BASE)}, used
