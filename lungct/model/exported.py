"""The export stage's files as a reader sees them: their names, the ONNX runner, the model card
of an export. No TensorFlow and no pandas here: the ONNX service image imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lungct.atomic import read_json
from lungct.evaluation.card import CARD_FILE

EXPORT_DIR = Path("models/export")
SAVEDMODEL_DIR = "savedmodel"
ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
RECORD_FILE = "export.json"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH = 64


def onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no graph-optimizer chatter on stderr
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an ONNX model written by :func:`write_onnx` (onnxruntime, CPU)."""
    session = onnx_session(path)
    return batched(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], images)


def batched(run: Callable[[np.ndarray], Any], images: np.ndarray) -> np.ndarray:
    """``run``'s float32 outputs on ``images``, :data:`BATCH` at a time."""
    chunks = (images[i : i + BATCH] for i in range(0, len(images), BATCH))
    return np.concatenate([np.asarray(run(chunk), dtype=np.float32) for chunk in chunks])


def card_of(model: Path) -> tuple[Path, str | None]:
    """Where the model card of ``model`` is, and the sha256 it must name: for an export
    (``<dir>/onnx/model.onnx`` with ``<dir>/export.json``), the card beside the export
    folder and the Keras model it was exported from; otherwise ``card.json`` beside the
    model and the model's own sha256 (None: compute it)."""
    record_file = Path(model).parent.parent / RECORD_FILE
    try:
        source = read_json(record_file)["source_model"]["sha256"]  # type: ignore[index]
    except (OSError, ValueError, KeyError, TypeError):
        return Path(model).parent / CARD_FILE.name, None
    return record_file.parent.parent / CARD_FILE.name, str(source)


class OnnxModel:
    """An exported ONNX model behind the part of the Keras interface that
    :class:`lungct.serving.inference.Predictor` uses: ``predict_on_batch``, ``input_shape``,
    ``output_shape``. Serving it needs onnxruntime, not TensorFlow."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path)
        (inputs,) = self.session.get_inputs()
        (outputs,) = self.session.get_outputs()
        self.input_name = inputs.name
        self.input_shape = tuple(None if isinstance(d, str) else d for d in inputs.shape)
        self.output_shape = tuple(None if isinstance(d, str) else d for d in outputs.shape)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})[0]
