"""export: the trained model as a TensorFlow SavedModel and an ONNX model, for serving.

Writes ``models/export/`` (``savedmodel/``, ``onnx/model.onnx``, each with the model
contract ``labels.json`` beside it, and ``export.json``): see :mod:`lungct.model.export`. Each
export is checked on the test split against the Keras model (within 1e-5) before the
folder is moved into place; a failed check is one ``error:`` line and leaves nothing.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

from lungct.errors import run_stage
from lungct.model.export import export


def main() -> None:
    export()


if __name__ == "__main__":
    run_stage(main)
