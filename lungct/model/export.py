"""Deployable copies of the trained model: a TensorFlow SavedModel and an ONNX model, each
with the model contract beside it, each checked against the Keras model when written.

``models/export/``::

    savedmodel/    saved_model.pb, variables/, fingerprint.pb, labels.json
    onnx/          model.onnx, labels.json
    export.json    what was exported, from which model (sha256), how it was checked

Both take ``image``: float32 N x H x W x C, pixel values 0..255 (the contract's input),
and give ``probabilities``: float32 N x classes, in the contract's class order. Both are
traced from ``model(image, training=False)``: the augmentation layers of a Keras 3 model
are active when ``training`` is not given (they default to ``training=True``), so
``model.export()`` would serve randomly flipped and rotated inputs.

The check: the test split's images (``data/splits``, the ``test`` rows of
``splits.csv``, decoded as evaluate decodes them) through each export, against the Keras
model's outputs, within :data:`TOLERANCE`. Anything else is a :class:`UserError`, and
nothing is left: the folder is written under a temporary name and moved into place only
once both exports passed (:func:`lungct.atomic.atomic_dir`).

Same model, same bytes, so DVC gives one hash per model (measured: export twice in two
processes, compare every file):

* SavedModel: only the variables the inference function reads are saved (the Keras seed
  generators' states, random for an unseeded layer at every load, are left out, and the
  inference path does not read them); ``fingerprint.pb`` holds a random ``uuid``, which
  is replaced by one derived from the content (the sha256 of ``saved_model.pb`` and the
  variables), so equal SavedModels have equal ids.
* ONNX: two of tf2onnx's graph optimizers (``optimize_transpose``, ``merge_duplication``)
  visit nodes in an order that changes from process to process (sets of node objects), so
  an ensemble's parallel members came out with other names and node orders: the same
  graph, other bytes. They are left out (:data:`ORDER_DEPENDENT_OPTIMIZERS`, through tf2onnx's own setting);
  ONNX Runtime removes the transposes they would have removed when it loads the model
  (as fast, measured: docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lungct.artifacts import CONTRACT_FILE, MODEL_FILE, SPLITS_DIR
from lungct.atomic import atomic_dir, sha256_file, write_json
from lungct.contract import Contract
from lungct.data.tables import read_splits, split_images
from lungct.errors import UserError, first_line
from lungct.model.exported import (
    BATCH,
    EXPORT_DIR,
    INPUT_NAME,
    ONNX_DIR,
    ONNX_FILE,
    OUTPUT_NAME,
    RECORD_FILE,
    SAVEDMODEL_DIR,
    batched,
    run_onnx,
)

CONTRACT_NAME = CONTRACT_FILE.name  # labels.json, beside each export
SIGNATURE = "serving_default"
OPSET = 17  # ONNX operator set: onnxruntime 1.17+ and every maintained runtime read it
# tf2onnx's optimizers whose result depends on the order of a set (see the module docstring)
ORDER_DEPENDENT_OPTIMIZERS = ("optimize_transpose", "merge_duplication")
TOLERANCE = 1e-5  # largest absolute difference of a probability from the Keras model's

log = logging.getLogger("export")


def export(
    model_path: Path = MODEL_FILE,
    contract_path: Path = CONTRACT_FILE,
    splits_dir: Path = SPLITS_DIR,
    out: Path = EXPORT_DIR,
) -> dict:
    """Write both exports of ``model_path`` to ``out``, checked on the test split; return
    the record written to ``out/export.json``."""
    if not Path(contract_path).is_file():
        raise UserError(f"{contract_path}: not found (run the train stage first: dvc repro)")
    contract = Contract.read(contract_path)
    paths, _ = split_images(read_splits(splits_dir), "test", list(contract.classes), splits_dir)
    if not Path(model_path).is_file():
        raise UserError(f"{model_path}: not found (run the train stage first: dvc repro)")

    from lungct.model.dataset import decode_images  # imports TensorFlow
    from lungct.model.saving import load_model  # imports TensorFlow

    for chatty in ("tensorflow", "tf2onnx"):  # "Assets written to ...tmp", optimizer steps
        logging.getLogger(chatty).setLevel(logging.ERROR)

    model = contract.check_model(load_model(model_path), model_path, contract_path)
    prep = contract.prep
    images = decode_images(paths, prep.image_size, prep.channels).astype(np.float32)
    expected = keras_outputs(model, images)
    serve = inference_function(model)
    record: dict[str, Any] = {
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, *contract.input_shape]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(contract.classes)]},
        "classes": list(contract.classes),
        # the model card (evaluate) names this sha256: its test figures apply to both exports
        "source_model": {"file": Path(model_path).name, "sha256": sha256_file(Path(model_path))},
        "checked_on": {"split": "test", "images": len(paths), "tolerance": TOLERANCE},
        "formats": {},
    }
    with atomic_dir(out) as tmp:
        saved = tmp / SAVEDMODEL_DIR
        write_savedmodel(serve, model, saved)
        contract.write(saved / CONTRACT_NAME)
        worst = check(run_savedmodel(saved, images), expected, out / SAVEDMODEL_DIR)
        record["formats"]["savedmodel"] = {"path": SAVEDMODEL_DIR, "signature": SIGNATURE}
        log.info("export: SavedModel, largest difference %.2g on %d images", worst, len(paths))

        onnx_path = tmp / ONNX_DIR / ONNX_FILE
        write_onnx(model, onnx_path)
        contract.write(onnx_path.parent / CONTRACT_NAME)
        worst = check(run_onnx(onnx_path, images), expected, out / ONNX_DIR / ONNX_FILE)
        record["formats"]["onnx"] = {"path": f"{ONNX_DIR}/{ONNX_FILE}", "opset": OPSET}
        log.info("export: ONNX, largest difference %.2g on %d images", worst, len(paths))
        write_json(tmp / RECORD_FILE, record)
    return record


def keras_outputs(model: Any, images: np.ndarray) -> np.ndarray:
    """The Keras model's probabilities, as predict and evaluate compute them."""
    return np.concatenate(
        [
            np.asarray(model.predict_on_batch(images[i : i + BATCH]), dtype=np.float32)
            for i in range(0, len(images), BATCH)
        ]
    )


def check(actual: np.ndarray, expected: np.ndarray, what: Path) -> float:
    """The largest absolute difference, or a :class:`UserError` when it is over tolerance."""
    if actual.shape != expected.shape:
        raise UserError(
            f"{what}: gives outputs of shape {actual.shape}, the Keras model {expected.shape}"
        )
    worst = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not worst <= TOLERANCE:  # NaN fails too
        raise UserError(
            f"{what}: outputs differ from the Keras model's by {worst:.3g} on the test split "
            f"(tolerance {TOLERANCE:g}); nothing exported"
        )
    return worst


def inference_function(model: Any) -> Any:
    """``model(image, training=False)`` as a ``tf.function`` with a fixed input signature
    (any batch size), returning ``{"probabilities": ...}``."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: model(image, training=False)}

    return serve


def read_variables(concrete: Any, model: Any) -> list[Any]:
    """The variables a traced function reads, in the model's own order (the function
    lists them in an order that changes from run to run, and so would the files)."""
    wanted = {id(v): v for v in concrete.variables}
    ordered = [v.value for v in model.variables if id(v.value) in wanted]
    seen = {id(v) for v in ordered}
    rest = sorted((v for k, v in wanted.items() if k not in seen), key=lambda v: v.name)
    return ordered + rest


def write_savedmodel(serve: Any, model: Any, path: Path) -> None:
    """A SavedModel with one signature, ``serving_default``, holding exactly the variables
    that ``serve`` reads; its fingerprint id derived from its content."""
    import tensorflow as tf

    concrete = serve.get_concrete_function()
    module = tf.Module()
    module.weights = read_variables(concrete, model)  # tracked: saved, and nothing else
    module.serve = serve
    try:
        tf.saved_model.save(module, str(path), signatures={SIGNATURE: concrete})
    except Exception as exc:  # TF raises many types; the stage reports one line
        raise UserError(f"{path}: cannot write the SavedModel ({first_line(exc)})") from None
    content_fingerprint(path)


def content_fingerprint(path: Path) -> None:
    """Replace the random ``uuid`` of ``fingerprint.pb`` with one derived from the
    SavedModel's bytes (the graph and the variables), so that equal content gives equal
    files. The other fields are hashes of the content already."""
    from tensorflow.core.protobuf import fingerprint_pb2

    fingerprint_file = path / "fingerprint.pb"
    if not fingerprint_file.is_file():  # an older TF writes none
        return
    digest = hashlib.sha256()
    content = [path / "saved_model.pb", *sorted((path / "variables").rglob("*"))]
    for file in content:
        if file.is_file():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(fingerprint_file.read_bytes())
    fingerprint.uuid = str(int.from_bytes(digest.digest()[:16], "big"))
    fingerprint_file.write_bytes(fingerprint.SerializeToString(deterministic=True))


def write_onnx(model: Any, path: Path) -> None:
    """``model(image, training=False)`` converted by tf2onnx (opset :data:`OPSET`), without
    its order-dependent optimizers."""
    import tensorflow as tf
    from tf2onnx import convert, optimizer

    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME),)
    optimizers = {  # tf2onnx's table of its optimizers, in its order, less the two
        name: factory
        for name, factory in optimizer._get_optimizers().items()
        if name not in ORDER_DEPENDENT_OPTIMIZERS
    }
    try:
        proto, _ = convert.from_keras(
            model, input_signature=spec, opset=OPSET, optimizers=optimizers
        )
    except Exception as exc:  # tf2onnx raises many types; the stage reports one line
        raise UserError(f"{path}: cannot convert the model to ONNX ({first_line(exc)})") from None
    proto.graph.doc_string = "probabilities = model(image, training=False)"  # not TF's name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString(deterministic=True))


def run_savedmodel(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from a SavedModel written by :func:`write_savedmodel`."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    return batched(lambda x: signature(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME], images)
