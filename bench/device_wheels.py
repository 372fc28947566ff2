"""The wheels a lent GPU machine needs to run the train and evaluate stages (bench/gpu.sh): this venv's
versions of the packages those stages import and their dependencies, less what the machine's image
already holds (a list of names, e.g. the device tool's KINDS.md package list), downloaded for its
Python (cp312, manylinux x86-64). The machine installs them with
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and puts /tmp/site first on PYTHONPATH.

    python -m bench.device_wheels --have device_packages.txt [--dest .whl] [--dry-run]"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

# what the train / evaluate stages and the GPU benches import beyond torch, lightning and numpy; the
# sqlite MLflow store needs sqlalchemy and alembic, which mlflow-skinny does not require
ROOTS = ("mlflow-skinny", "sqlalchemy", "alembic", "albumentations", "pydantic", "pyyaml", "pandas", "scikit-learn")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_28_x86_64")
PLATFORMS += ("manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing(roots: tuple[str, ...], have: set[str]) -> dict[str, str]:
    """{name: this venv's version} for the roots and everything they require (extras left out) that
    `have` lacks; names not installed here are skipped (optional or platform-specific requirements)."""
    have = {normalized(n) for n in have} | {"pip", "setuptools", "wheel"}
    versions: dict[str, str | None] = {}
    stack = [normalized(r) for r in roots]
    while stack:
        name = stack.pop()
        if name in versions:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            versions[name] = None
            continue
        versions[name] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                stack.append(normalized(re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)))
    return {n: v for n, v in sorted(versions.items()) if v and n not in have}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_wheels", description=__doc__)
    parser.add_argument("--have", type=Path, required=True, help="the image's package names (comma/space separated)")
    parser.add_argument("--dest", type=Path, default=Path(".whl"))
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--dry-run", action="store_true", help="print the pins only")
    args = parser.parse_args(argv)
    pins = missing(ROOTS, set(args.have.read_text(encoding="utf-8").replace(",", " ").split()))
    print(" ".join(f"{n}=={v}" for n, v in pins.items()))
    if args.dry_run:
        return 0
    failed = []
    for name, version in pins.items():
        platforms = [f"--platform={p}" for p in PLATFORMS]
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d"]
        command += [str(args.dest), "--implementation=cp", f"--python-version={args.python_version}", *platforms]
        if subprocess.run([*command, f"{name}=={version}"], capture_output=True).returncode:
            failed.append(f"{name}=={version}")
    if failed:
        print(f"no wheel for: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
