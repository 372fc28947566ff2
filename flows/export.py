"""`imgcls export --format onnx`: a registered (or saved) model as one ONNX file, checked against the
PyTorch predictor on the prepared store's test split before it is kept.

The ONNX graph (models/onnx_export.py) takes input "images", uint8 [batch, size, size, channels] NHWC,
and gives "probabilities", float32 [batch, num_classes]. Beside FILE goes FILE's stem + ".parity.json"
(max |probability difference|, label agreement, the bound, versions). Parity above the bound or any
label disagreement is a UserError and leaves no .onnx file behind. When the model is a registry version
(models:/NAME@ALIAS or models:/NAME/N) both files are logged to that version's run under onnx/ and the
version gets the tags in TAGS."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.atomic import atomic_path, write_json
from tasks.common.errors import UserError

FORMATS = ("onnx",)
DEFAULT_OUT = "artifacts/export/model.onnx"
ARTIFACT_DIR = "onnx"  # in the version's run
# model-version tags: "onnx" is the artifact URI of the exported file, the others the parity figures
TAGS = ("onnx", "onnx_max_abs_diff", "onnx_label_agreement", "onnx_parity_images")
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class RegistryVersion:
    name: str
    version: str
    run_id: str


def parity_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".parity.json")


def registry_version(model_uri: str) -> RegistryVersion | None:
    """The registry version a models:/ URI names (alias or number), or None for any other model."""
    if not model_uri.startswith("models:/"):
        return None
    match = _REGISTRY_URI.match(model_uri)
    if not match:
        raise UserError(f"{model_uri}: give a registry model as models:/NAME@ALIAS or models:/NAME/VERSION")
    from tasks.judging.registry import aliases, connect, model_version

    client = connect()
    name, alias = match["name"], match["alias"]
    if alias is not None:
        version = aliases(client, name).get(alias)
        if version is None:
            raise UserError(f"model {name!r} has no alias {alias!r}")
    else:
        version = match["version"]
    found = model_version(client, name, version)
    return RegistryVersion(name, str(found.version), found.run_id)


def local_model(model_uri: str, version: RegistryVersion | None, into: str) -> Path:
    """A local folder holding the model: the path itself, else MLflow's download of the URI."""
    if version is None and "://" not in model_uri and not model_uri.startswith(("runs:/", "models:/")):
        if not Path(model_uri).exists():
            raise UserError(f"{model_uri}: no such model folder or file")
        return Path(model_uri)
    import mlflow.artifacts

    from tasks.common.tracking import tracking_uri

    uri = f"models:/{version.name}/{version.version}" if version else model_uri
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=into, tracking_uri=tracking_uri()))
    except Exception as exc:  # registry, store and filesystem errors all mean "no model there"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot download model {model_uri}: {text}"[:300]) from None


def split_images(prepared: str | Path, image_size: int, channels: int) -> np.ndarray:
    """The prepared store's test split as uint8 NHWC, checked against the model's input size."""
    from tasks.common.prepared import read_prepared

    store = read_prepared(prepared)
    rows = store.split("test")["row"].to_numpy()
    images = np.asarray(store.images[np.sort(rows)])
    expected = (image_size, image_size, channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise UserError(
            f"{prepared}: test images are {images.shape[1:]} but the model takes {expected}: "
            "export with the prepared store the model was trained on"
        )
    return images


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(
    model_uri: str,
    out: str | Path,
    prepared: str | Path,
    fmt: str = "onnx",
    max_diff: float | None = None,
    batch_size: int = 256,
) -> dict:
    """Export, check parity on the test split, write FILE and its parity JSON, record them in the
    registry for a registry version; returns the parity report (raises UserError when it fails)."""
    import onnxruntime
    import torch

    from models.onnx_export import DEFAULT_MAX_DIFF, INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx, parity, session
    from models.predictor import load_predictor

    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is not supported: use one of {', '.join(FORMATS)}")
    max_diff = DEFAULT_MAX_DIFF if max_diff is None else float(max_diff)
    out = Path(out)
    version = registry_version(model_uri)
    with tempfile.TemporaryDirectory(prefix="imgcls-export-") as tmp:
        predictor = load_predictor(local_model(model_uri, version, tmp))
        images = split_images(prepared, predictor.image_size, predictor.channels)
        staged = export_onnx(predictor, Path(tmp) / out.name)
        report = {
            "model": model_uri,
            "format": fmt,
            "file": str(out),
            "split": "test",
            **parity(predictor, session(staged), images, batch_size),
            "max_diff_bound": max_diff,
            "input": {
                "name": INPUT_NAME,
                "dtype": "uint8",
                "shape": ["batch", predictor.image_size, predictor.image_size, predictor.channels],
            },
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(predictor.classes)]},
            "classes": list(predictor.classes),
            "test_time_flip": predictor.test_time_flip,
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        if version is not None:
            report["registry"] = {"name": version.name, "version": version.version, "run_id": version.run_id}
        try:
            check_parity(report, max_diff)
        except UserError as exc:
            report["passed"] = False
            write_json(report, parity_path(out))
            raise UserError(f"{exc} (report: {parity_path(out)}; no ONNX file written)") from None
        report["passed"] = True
        report["sha256"] = _sha256(staged)
        with atomic_path(out) as tmp_out:
            shutil.copyfile(staged, tmp_out)
    write_json(report, parity_path(out))
    if version is not None:
        _record(version, out, report)
    return report


def _record(version: RegistryVersion, out: Path, report: dict) -> None:
    """Log the ONNX file and its parity JSON to the version's run, and tag the version."""
    from tasks.judging.registry import connect, set_tags

    client = connect()
    for path in (out, parity_path(out)):
        client.log_artifact(version.run_id, str(path), artifact_path=ARTIFACT_DIR)
    values = (
        f"runs:/{version.run_id}/{ARTIFACT_DIR}/{out.name}",
        f"{report['max_abs_diff']:.3g}",
        f"{report['label_agreement']:.4f}",
        report["images"],
    )
    set_tags(client, version.name, version.version, dict(zip(TAGS, values)))
