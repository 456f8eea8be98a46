"""Saving a model byte-reproducibly, and loading one safely for inference."""

from __future__ import annotations

import json
import os
import zipfile
import zlib

import keras

from lungct.atomic import MAX_JSON_BYTES, parse_json
from lungct.errors import UserError, first_line
from lungct.limits import EXPANSION_FLOOR, MAX_EXPANSION, size_text
from lungct.model import calibrate, network  # noqa: F401  (register the project's layers for loading)

# What load_model admits in a .keras file before Keras reads any of it: its JSON members
# as lungct.atomic.parse_json bounds them, weights up to MAX_WEIGHTS_BYTES (the largest
# network params.yaml can ask for is about 1 GiB of float32), no member expanding more
# than the image rule (lungct.limits) allows, and a handful of members.
JSON_MEMBERS = ("config.json", "metadata.json")
MAX_WEIGHTS_BYTES = 4 * 2**30
MAX_MEMBERS = 64


def _renumber_shared_objects(config: object, ids: dict) -> object:
    if isinstance(config, dict):
        return {
            key: ids.setdefault(value, len(ids))
            if key == "shared_object_id"
            else _renumber_shared_objects(value, ids)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_renumber_shared_objects(value, ids) for value in config]
    return config


def save_model(model: keras.Model, path: os.PathLike) -> None:
    """``model.save``, made byte-reproducible, so one training gives one DVC hash.

    Keras stamps the save time into ``metadata.json`` and the zip headers, and
    numbers shared objects in ``config.json`` by their memory address; the stamps
    are removed and the numbers replaced by their order of appearance.
    """
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.external_attr = info.external_attr
            archive.writestr(fixed, data, compress_type=info.compress_type)


def inference_model(model: keras.Model) -> keras.Model:
    """A float32 copy of ``model`` for inference, with its weights: a ``train.precision:
    mixed_bfloat16`` model computes in float32 here, as its exports do; the model itself is
    left untouched. Batch norm is not folded into the convolutions: TensorFlow's graph
    optimiser (and ONNX Runtime) fuse them (``python -m benchmarks.batch_norm``)."""

    def float32(layer: keras.Layer) -> keras.Layer:
        return type(layer).from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=float32, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def archive_problem(path: os.PathLike) -> str | None:
    """Why the ``.keras`` zip at ``path`` may not be handed to Keras, or None: too many
    members, a member declared larger than its bound or than :data:`MAX_EXPANSION` times
    its compressed size (over :data:`EXPANSION_FLOOR`), a JSON member missing or not
    :func:`lungct.atomic.parse_json`'s bounded JSON. Declared sizes bound what zipfile
    reads, so nothing larger is ever decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                return f"{len(members)} members, over {MAX_MEMBERS}"
            for info in members:
                bound = MAX_JSON_BYTES if info.filename in JSON_MEMBERS else MAX_WEIGHTS_BYTES
                if info.file_size > bound:
                    return (
                        f"{info.filename} of {size_text(info.file_size)}, over {size_text(bound)}"
                    )
                expands = max(EXPANSION_FLOOR, MAX_EXPANSION * info.compress_size)
                if info.file_size > expands:
                    return (
                        f"{info.filename} expands to {size_text(info.file_size)} from "
                        f"{size_text(info.compress_size)}: a decompression bomb"
                    )
            names = {info.filename for info in members}
            for name in JSON_MEMBERS:
                if name not in names:
                    return f"no {name}"
                parse_json(archive.read(name))
    except json.JSONDecodeError as exc:
        return f"{name}: {exc.msg}"  # the member being parsed
    except (zipfile.BadZipFile, zlib.error, UnicodeDecodeError, OSError, EOFError) as exc:
        return first_line(exc)
    return None


def load_model(path: os.PathLike, for_inference: bool = True) -> keras.Model:
    """Load a trained model in Keras safe mode (no arbitrary code from the file): its float32
    copy (:func:`inference_model`) ``for_inference``, else the model as saved (to train on, or
    to compare). A missing, truncated or foreign file is a :class:`UserError` naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (train a model first: dvc repro)")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: not a Keras model file (truncated or damaged?); rebuild it: dvc repro"
        )
    if problem := archive_problem(path):
        raise UserError(f"{path}: not a Keras model file ({problem}); rebuild it: dvc repro")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # a damaged member, or code that safe mode refuses
        raise UserError(
            f"{path}: cannot load the model ({first_line(exc)}); rebuild it: dvc repro"
        ) from None
    return inference_model(model) if for_inference else model
