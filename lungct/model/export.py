"""Deployable copies of the trained model in ``models/export/`` (docs/deploy.md, "The
exports"): a TensorFlow SavedModel and an ONNX model, each with the model contract beside
it and checked against the Keras model on the test split, and ``export.json``, the record.

Both are traced from ``model(image, training=False)``: Keras 3's augmentation layers default
to ``training=True``, so ``model.export()`` would serve randomly flipped and rotated inputs.
Same model, same bytes (docs/deploy.md, "Reproducible bytes"): the SavedModel holds only the
variables inference reads, with a fingerprint id derived from its content; tf2onnx runs
without its optimizers that visit nodes in a per-process order.
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
# tf2onnx's optimizers whose result depends on the order of a set (docs/deploy.md)
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
    expected = batched(model.predict_on_batch, images)  # as predict and evaluate compute
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
    rest = {id(v): v for v in concrete.variables}
    ordered = [rest.pop(id(v.value)) for v in model.variables if id(v.value) in rest]
    return ordered + sorted(rest.values(), key=lambda v: v.name)


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
    # tf2onnx names the output after the model's last layer (the temperature's, when
    # calibrated): the one output is OUTPUT_NAME, as in the SavedModel's signature
    (output,) = proto.graph.output
    for node in proto.graph.node:
        for names in (node.input, node.output):
            names[:] = [OUTPUT_NAME if name == output.name else name for name in names]
    output.name = OUTPUT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString(deterministic=True))


def run_savedmodel(path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from a SavedModel written by :func:`write_savedmodel`."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    return batched(lambda x: signature(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME], images)
