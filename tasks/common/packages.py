"""Which version of a package is installed: pins the shipped model's requirements and keys caches.
Part of the small base that ships inside the registered model (with errors and images)."""

from __future__ import annotations

from importlib import metadata


def installed_version(name: str) -> tuple[str, str] | None:
    """(distribution, version) installed for `name`, or None; MLflow may be there as mlflow-skinny alone."""
    for dist in (name, f"{name}-skinny") if name == "mlflow" else (name,):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
