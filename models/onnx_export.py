"""ONNX export of a Predictor, and the parity check that the ONNX graph scores like PyTorch.

The graph holds everything Predictor.predict_proba does after decoding: the uint8 -> float cast,
Normalize(mean, std, max_pixel_value=255), NHWC -> NCHW, the network, the division of the logits by the
model's temperature (stats["temperature"], fitted by train; none when it is 1 or absent), softmax and,
when the model was trained with test_time_flip, the mean over the image and its mirror. So an ONNX runtime needs only the
decoded, resized pixels (tasks.common.images.to_array gives exactly those):

    input  "images"         uint8   [batch, image_size, image_size, channels]   (NHWC, 0..255)
    output "probabilities"  float32 [batch, num_classes]   (rows sum to 1; column j = classes[j])

The class names, image size, channels, flip setting and temperature are in the file's metadata_props (METADATA_KEYS).
Exported with torch.onnx.export(dynamo=True), the maintained exporter (it needs onnxscript); the
TorchScript exporter (dynamo=False) still works in torch 2.14 but is deprecated. Not part of the
shipped pyfunc (SHIPPED_MODELS)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.predictor import Predictor
from tasks.common.errors import UserError

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
METADATA_KEYS = ("classes", "image_size", "channels", "test_time_flip", "mean", "std", "temperature")
DEFAULT_MAX_DIFF = 1e-4


class ProbabilityGraph(nn.Module):
    """Predictor.predict_proba as one module: uint8 NHWC in, class probabilities out."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.network = predictor.network
        self.test_time_flip = predictor.test_time_flip
        self.temperature = predictor.temperature  # a constant in the graph, divided by as Predictor does
        channels = predictor.channels
        # the same float32 constants, in the same order of operations, as Predictor
        mean = np.asarray(predictor.stats["mean"], dtype=np.float32).reshape(1, 1, 1, channels) * 255.0
        std = np.asarray(predictor.stats["std"], dtype=np.float32).reshape(1, 1, 1, channels) * 255.0
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.to(torch.float32) - self.mean) / self.std).permute(0, 3, 1, 2)
        probs = torch.softmax(self._scaled(self.network(x).float()), dim=1)
        if self.test_time_flip:
            probs = (probs + torch.softmax(self._scaled(self.network(x.flip(3)).float()), dim=1)) / 2
        return probs

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature == 1.0 else logits / self.temperature


def export_onnx(predictor: Predictor, path: str | Path) -> Path:
    """Write the predictor as one self-contained .onnx file (weights inside, batch dimension dynamic)."""
    import onnx

    path = Path(path)
    graph = ProbabilityGraph(predictor).cpu().eval()
    example = torch.zeros((2, predictor.image_size, predictor.image_size, predictor.channels), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # the exporter reports each step on stdout and warns about its own internals: keep the CLI quiet
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    model = program.model_proto
    stats = predictor.stats
    values = {
        "classes": list(predictor.classes),
        "image_size": predictor.image_size,
        "channels": predictor.channels,
        "test_time_flip": predictor.test_time_flip,
        "mean": list(stats["mean"]),
        "std": list(stats["std"]),
        "temperature": predictor.temperature,
    }
    for key in METADATA_KEYS:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(values[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))  # under 2 GB: weights stay inside the one file
    onnx.checker.check_model(str(path))
    return path


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def metadata(sess) -> dict:
    """The METADATA_KEYS an exported file carries, decoded."""
    custom = sess.get_modelmeta().custom_metadata_map
    return {key: json.loads(custom[key]) for key in METADATA_KEYS if key in custom}


def onnx_proba(sess, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8)
    out = [
        sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def parity(predictor: Predictor, sess, images: np.ndarray, batch_size: int = 256) -> dict:
    """Score `images` (uint8 NHWC) through PyTorch and ONNX Runtime: the largest absolute probability
    difference and the share of images given the same label."""
    if len(images) == 0:
        raise UserError("no images to check ONNX parity on (the test split is empty)")
    reference = predictor.predict_proba(images)
    exported = onnx_proba(sess, images, batch_size)
    agree = reference.argmax(1) == exported.argmax(1)
    return {
        "images": int(len(images)),
        "max_abs_diff": float(np.abs(reference - exported).max()),
        "label_agreement": float(agree.mean()),
        "labels_differing": int((~agree).sum()),
    }


def check_parity(report: dict, max_diff: float) -> None:
    """UserError (one line) unless the ONNX probabilities are within `max_diff` and every label agrees."""
    problems = []
    if not report["max_abs_diff"] <= max_diff:
        problems.append(f"max |probability difference| {report['max_abs_diff']:.3g} > bound {max_diff:g}")
    if report["label_agreement"] < 1.0:
        problems.append(f"{report['labels_differing']} of {report['images']} labels differ")
    if problems:
        raise UserError(f"ONNX export does not match PyTorch on {report['images']} test images: {'; '.join(problems)}")
