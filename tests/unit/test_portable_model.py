"""The registered model is portable: it loads and predicts where only its own requirements.txt is
installed. A model saved through the real save path (models.pyfunc.save_pyfunc) is loaded in a fresh
interpreter outside the project (no checkout on sys.path, the editable install's finder removed) with
the training and pipeline packages made unimportable; its requirements.txt is checked against the
imports of the code it ships."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from models.networks import build_network
from models.predictor import save_model_files
from models.pyfunc import REQUIREMENTS, SHIPPED_BASE, SHIPPED_MODELS, save_pyfunc
from tests.helpers.images import png_bytes

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "dog", "fox"]
# What training, the pipeline and the full mlflow distribution bring, and inference must not need.
# mlflow tries scipy.sparse and sklearn, its tracking-store registry probes sqlalchemy and pandas
# probes pyarrow, all optionally. torchvision is not here: `import timm` needs it (timm/layers/create_norm.py
# and norm_act.py import torchvision.ops unconditionally), and timm declares it, so it arrives with timm.
UNIMPORTABLE = (
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "lightning_utilities",
    "torchmetrics",
    "scipy",
    "sklearn",
    "albumentations",
    "albucore",
    "cv2",
    "prefect",
    "dvc",
    "matplotlib",
    "pyarrow",
    "flask",
    "sqlalchemy",
    "alembic",
    "skops",
    "docker",
    "graphene",
    "gunicorn",
)

# Run by a fresh `python -I` (no PYTHONPATH, no user site, no script directory on sys.path) in tmp_path.
LOADER = r'''
import importlib.abc, importlib.util, json, sys
from importlib.machinery import PathFinder
from pathlib import Path

args = json.loads(sys.argv[1])
blocked, attempts = set(args["unimportable"]), []


class NotInstalled(importlib.abc.MetaPathFinder):
    """The standard PathFinder, except that the blocked packages are not there: find_spec gives None
    for them, as for a package that is not installed, so `import` raises ModuleNotFoundError and
    importlib.util.find_spec returns None."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            attempts.append(name)
            return None
        return PathFinder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        return PathFinder.find_distributions(*args, **kwargs)

    def invalidate_caches(self):
        PathFinder.invalidate_caches()


# the project's editable install maps tasks/, models/ and flows/ to the checkout: take it away
editable = lambda f: "__editable__" in (getattr(f, "__module__", "") or type(f).__module__)
sys.meta_path[:] = [NotInstalled() if f is PathFinder else f for f in sys.meta_path if not editable(f)]
assert any(isinstance(f, NotInstalled) for f in sys.meta_path)
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
project = Path(args["project"])
on_path = [p for p in sys.path if Path(p or ".").resolve() == project]
findable = [n for n in ("tasks", "models", "flows") if importlib.util.find_spec(n) is not None]

import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(args["model"])
out = model.predict(pd.DataFrame({"image": args["images"]}))
ours = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.partition(".")[0] in ("tasks", "models", "flows")}
print(json.dumps({"rows": out.to_dict(orient="records"), "ours": ours, "attempts": sorted(set(attempts)),
                  "loaded": sorted(n for n in sys.modules if n.partition(".")[0] in blocked),
                  "on_path": on_path, "findable_before_load": findable, "sys_path": sys.path}))
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny real network (resnet_tiny, RGB, test-time flip) saved as the pyfunc training saves."""
    root = tmp_path_factory.mktemp("portable")
    torch.manual_seed(0)
    network = build_network("resnet_tiny", len(CLASSES), 3)
    stats = {"image_size": 16, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "test_time_flip": True}
    files = save_model_files(root / "files", "resnet_tiny", network, CLASSES, stats)
    save_pyfunc(root / "model", files, np.zeros((16, 16, 3), dtype=np.uint8))
    return root / "model"


def _requirements(model: Path) -> dict[str, str]:
    """requirements.txt of a saved model: normalized distribution name -> pinned version."""
    pins = {}
    for line in (model / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _shipped_sources(model: Path) -> list[Path]:
    return sorted((model / "code").rglob("*.py")) + [model / "pyfunc_entry.py"]


def _imports(files: list[Path]) -> set[str]:
    """Top-level names of every absolute import in `files`, function-level (lazy) imports included."""
    names = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


def _png_files(tmp_path: Path) -> list[str]:
    paths = []
    for value, mode in ((30, "L"), (140, "RGB"), (240, "L")):
        path = tmp_path / f"{value}.png"
        path.write_bytes(png_bytes(value, size=23, mode=mode))
        paths.append(str(path))
    return paths


def test_loads_and_predicts_without_training_or_pipeline_packages(saved, tmp_path):
    images = _png_files(tmp_path)
    args = {
        "model": str(saved),
        "images": [*images, str(tmp_path / "missing.png")],
        "unimportable": UNIMPORTABLE,
        "project": str(ROOT),
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH, no MLFLOW_* settings
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, json.dumps(args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # the checkout was not reachable: neither on sys.path nor through the editable install
    assert report["on_path"] == [] and report["findable_before_load"] == [], report["sys_path"]
    # all of our code that ran came from the saved model's code/ folder, and none of flows/
    assert report["ours"] and not any(n.startswith("flows") for n in report["ours"])
    for name, file in report["ours"].items():
        assert file and Path(file).resolve().is_relative_to(saved.resolve() / "code"), (name, file)
    assert {"models.pyfunc", "models.predictor", "tasks.common.images"} <= set(report["ours"])
    assert report["loaded"] == []

    rows = report["rows"]
    assert [r["error"] for r in rows[:3]] == ["", "", ""] and all(r["label"] in CLASSES for r in rows[:3])
    assert all(0 < r["score"] <= 1 for r in rows[:3])
    assert rows[3]["label"] == "" and "not an existing file" in rows[3]["error"]
    # what was attempted and refused (guarded optional imports), for the record in the test output
    print("unimportable packages tried at load/predict:", report["attempts"])


def test_requirements_cover_every_import_of_the_shipped_code(saved):
    pins = _requirements(saved)
    assert set(pins) == {_normal(name) for name in REQUIREMENTS}
    shipped_packages = {p.name for p in (saved / "code").iterdir() if p.is_dir()}
    assert shipped_packages == {"models", "tasks"}
    third_party = _imports(_shipped_sources(saved)) - set(sys.stdlib_module_names) - shipped_packages - {"__future__"}
    providers = metadata.packages_distributions()
    needed = {}
    for name in sorted(third_party):
        dists = {_normal(d) for d in providers.get(name, [])}
        assert dists, f"the shipped code imports {name!r}, which no installed distribution provides"
        needed[name] = dists
    missing = {name: sorted(dists) for name, dists in needed.items() if not dists & set(pins)}
    assert not missing, f"imported by the shipped code but not in requirements.txt: {missing}"
    # and nothing is required that the shipped code does not import
    unused = {req for req in pins if not any(req in dists for dists in needed.values())}
    assert not unused, f"in requirements.txt but not imported by the shipped code: {unused}"
    # torchvision, which timm imports, comes with timm (see UNIMPORTABLE)
    assert any(_normal(r.split(";")[0].split()[0].rstrip("<>=!~")) == "torchvision" for r in metadata.requires("timm"))
    # pinned to what is installed here (the versions the model was saved and tested with)
    for name, version in pins.items():
        assert version == metadata.version(name), name


def test_the_shipped_code_is_exactly_the_entry_points_import_closure(saved):
    """SHIPPED_MODELS + SHIPPED_BASE: what pyfunc_entry reaches, nothing left out and nothing extra."""
    code = saved / "code"
    reached, todo = set(), [saved / "pyfunc_entry.py"]
    while todo:
        file = todo.pop()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for module in modules:
                if module.partition(".")[0] not in ("models", "tasks", "flows"):
                    continue
                parts = module.split(".")
                for i in range(1, len(parts) + 1):  # every package __init__ on the way
                    package, leaf = (
                        code.joinpath(*parts[:i], "__init__.py"),
                        code.joinpath(*parts[:i]).with_suffix(".py"),
                    )
                    target = package if package.exists() else leaf
                    assert target.exists(), f"{file.name} imports {module}, which the model does not ship"
                    if target not in reached:
                        reached.add(target)
                        todo.append(target)
    shipped = set(code.rglob("*.py"))
    assert reached == shipped, sorted(str(p.relative_to(code)) for p in reached ^ shipped)
    assert {str(p.relative_to(code / "models")) for p in (code / "models").rglob("*.py")} == set(SHIPPED_MODELS)
    assert {str(p.relative_to(code / "tasks")) for p in (code / "tasks").rglob("*.py")} == {
        "__init__.py",
        "common/__init__.py",
        *SHIPPED_BASE,
    }


@pytest.mark.slow
def test_a_fresh_venv_from_requirements_txt_loads_and_predicts(saved, tmp_path):
    """The real thing: a venv without system site-packages, only `pip install -c constraints.txt -r
    requirements.txt` (needs the package index; torch is a large download)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "HTTP", "HTTPS", "NO_PROXY"))},
    }
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            "-r",
            str(saved / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=3000,
        env=env,
    )
    if pip.returncode != 0 and re.search(
        r"NewConnectionError|Network is unreachable|Temporary failure in name "
        r"resolution|No route to host",
        pip.stdout + pip.stderr,
    ):
        pytest.skip(f"package index unreachable: {(pip.stdout + pip.stderr).strip().splitlines()[-1]}")
    assert pip.returncode == 0, (pip.stdout + pip.stderr)[-3000:]
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True, env=env
    ).stdout
    present = {_normal(line.partition("==")[0]) for line in installed.splitlines()}
    assert not present & {"lightning", "scikit-learn", "scipy", "albumentations", "prefect", "dvc", "mlflow"}, present

    images = _png_files(tmp_path)
    args = {"model": str(saved), "images": images, "unimportable": [], "project": str(ROOT)}
    result = subprocess.run(
        [str(python), "-I", "-c", LOADER, json.dumps(args)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [r["error"] for r in rows] == ["", "", ""] and all(r["label"] in CLASSES for r in rows)
