"""Numbers that are not what they claim: NaN or infinite model outputs are a file's reason
(``non_finite_output``), never an answer, on every path (Keras or ONNX; predict, the
service, the app); NaN pixels of a float image are a skip reason (``non_finite_pixels``);
every JSON file the project reads is bounded (size, depth, no NaN), and a ``.keras`` file
is checked before Keras reads it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from lungct.atomic import MAX_JSON_BYTES, MAX_JSON_DEPTH, parse_json, read_json
from lungct.contract import Contract
from lungct.errors import SkippedFile, UserError
from lungct.evaluation.card import read_card
from lungct.io.dicom import read_ct
from lungct.io.images import read_image
from lungct.model.exported import card_of
from lungct.params import Preprocessing
from lungct.phantom import ct_slice_dataset, fov_mask, patient_rng, phantom_patient
from lungct.reasons import NO_PIXEL_DATA, NON_FINITE_OUTPUT, NON_FINITE_PIXELS
from lungct.serving.inference import (
    NonFiniteOutput,
    Predictor,
    checked_outputs,
    predict_bytes,
    predict_files,
)

CLASSES = ("benign", "malignant", "normal")
SIZE = 32


def contract() -> Contract:
    return Contract(CLASSES, Preprocessing([(-600.0, 1500.0)], False, SIZE, framing="image"))


class BrightIsNaN:
    """A stand-in model: NaN for an image whose mean is over 200 (white), else uniform."""

    input_shape = (None, SIZE, SIZE, 1)
    output_shape = (None, len(CLASSES))

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        out = np.full((len(x), len(CLASSES)), 1 / len(CLASSES), dtype=np.float32)
        out[x.reshape(len(x), -1).mean(axis=1) > 200] = np.nan
        return out


def png(path: Path, value: int) -> Path:
    Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint8)).save(path)
    return path


def test_checked_outputs_marks_the_rows_that_are_not_finite():
    good = np.array([[0.2, 0.3, 0.5]], dtype=np.float32)
    assert checked_outputs(good) is good
    bad = np.array([[0.2, 0.3, 0.5], [np.nan, 0.5, 0.5], [np.inf, 0, 0]], dtype=np.float32)
    with pytest.raises(NonFiniteOutput) as caught:
        checked_outputs(bad)
    assert caught.value.reason == NON_FINITE_OUTPUT
    assert caught.value.rows.tolist() == [False, True, True]


def test_predict_files_fails_the_file_whose_output_is_nan_and_answers_the_rest(tmp_path):
    files = [png(tmp_path / "a.png", 10), png(tmp_path / "b.png", 255), png(tmp_path / "c.png", 90)]
    predictor = Predictor(BrightIsNaN(), contract())
    rows, failures = predict_files(predictor, files, batch_size=8)
    assert [Path(row.file).name for row in rows] == ["a.png", "c.png"]
    assert all(np.isfinite(row.probabilities).all() for row in rows)
    assert [(Path(f.file).name, f.reason) for f in failures] == [("b.png", NON_FINITE_OUTPUT)]


def test_a_batcher_that_merged_requests_fails_the_whole_batch_never_answers_nan(tmp_path):
    """The service's micro-batcher hands one request the exception of a merged batch: its
    rows are not this request's, so every file of it fails."""

    class Merged:
        prep = contract().prep

        def probabilities(self, images):
            rows = np.array([False] * len(images) + [True])
            raise NonFiniteOutput(np.zeros((len(rows), 3), np.float32), rows)

    files = [png(tmp_path / "a.png", 10), png(tmp_path / "b.png", 90)]
    rows, failures = predict_files(Merged(), files, batch_size=8)
    assert rows == []
    assert [f.reason for f in failures] == [NON_FINITE_OUTPUT] * 2


def test_an_upload_with_nan_outputs_is_a_skipped_file_for_the_app():
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), 255, dtype=np.uint8)).save(buffer, "PNG")
    with pytest.raises(SkippedFile) as caught:
        predict_bytes(Predictor(BrightIsNaN(), contract()), buffer.getvalue())
    assert caught.value.reason == NON_FINITE_OUTPUT


def nan_onnx(path: Path) -> Path:
    """An ONNX model of the project's interface whose weights are NaN."""
    import onnx
    from onnx import TensorProto, helper

    features = SIZE * SIZE
    weights = np.full((features, len(CLASSES)), np.nan, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"]),
        ],
        "nan",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_onnx_model_with_nan_weights_answers_no_file_in_the_service(tmp_path):
    from lungct.model.exported import OnnxModel
    from lungct.serving.service import Service

    model = nan_onnx(tmp_path / "model.onnx")
    predictor = Predictor(OnnxModel(model), contract())
    with pytest.raises(NonFiniteOutput):
        predictor.probabilities([np.zeros((SIZE, SIZE), np.uint8)])
    data = png(tmp_path / "in.png", 40).read_bytes()
    for batching in ("queue", "none"):
        service = Service(predictor, model, None, batching=batching)
        try:
            document = service.predict_uploads([("scan.png", io.BytesIO(data))])
        finally:
            if service.batcher is not None:
                service.batcher.close()
        json.dumps(document, allow_nan=False)  # valid JSON: no NaN anywhere
        text = json.dumps(document)
        assert NON_FINITE_OUTPUT in text and "scan.png" in text, batching


# ------------------------------------------------------------------------- float pixels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_image_with_non_finite_pixels_is_skipped_not_black(tmp_path, bad):
    values = np.full((16, 16), 100.0, dtype=np.float32)
    values[3:9, 3:9] = bad
    Image.fromarray(values).save(tmp_path / "x.tif")
    with pytest.raises(SkippedFile) as caught:
        read_image(tmp_path / "x.tif")
    assert caught.value.reason == NON_FINITE_PIXELS
    assert "36 of 256" in caught.value.detail


def test_an_all_nan_tiff_gets_a_reason_in_predict(tmp_path):
    Image.fromarray(np.full((SIZE, SIZE), np.nan, np.float32)).save(tmp_path / "nan.tif")
    rows, failures = predict_files(Predictor(BrightIsNaN(), contract()), [tmp_path / "nan.tif"])
    assert rows == [] and [f.reason for f in failures] == [NON_FINITE_PIXELS]


def test_a_finite_float_image_still_reads(tmp_path):
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(tmp_path / "f.tif")
    gray, mode = read_image(tmp_path / "f.tif")
    assert mode == "F" and (gray == 255).all()


def test_dicom_float_pixel_data_is_never_decoded(tmp_path):
    hu = phantom_patient(patient_rng(3, 0), "malignant", 1, 32).hu[0]
    ds = ct_slice_dataset(
        hu,
        patient_id="F",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.5",
        instance_number=1,
        z_mm=0.0,
        pixel_spacing_mm=1.0,
        slice_thickness_mm=1.0,
        fov_mask=fov_mask(32),
    )
    del ds.PixelData
    ds.FloatPixelData = np.full(hu.shape, np.nan, dtype=np.float32).tobytes()
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    assert "FloatPixelData" in pydicom.dcmread(tmp_path / "f.dcm")
    with pytest.raises(SkippedFile) as caught:
        read_ct(tmp_path / "f.dcm")
    assert caught.value.reason == NO_PIXEL_DATA and "FloatPixelData" in caught.value.detail


# ------------------------------------------------------------------------- bounded JSON


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (deep(MAX_JSON_DEPTH + 1), "nested deeper"),
        (deep(100_000), "nested deeper"),
        ('{"a": NaN}', "NaN"),
        ("[Infinity]", "Infinity"),
        ("[-1e999]", "past the float range"),
        ("[" + "9" * 5000 + "]", "digits"),
    ],
)
def test_parse_json_refuses_what_is_not_plain_json(text, says):
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_json(text)
    assert says in caught.value.msg


def test_parse_json_keeps_brackets_inside_strings_and_nan_when_asked():
    assert parse_json('{"a": "[[[[{{{{", "b": [1, 2.5]}') == {"a": "[[[[{{{{", "b": [1, 2.5]}
    assert parse_json(deep(MAX_JSON_DEPTH)) is not None
    assert np.isnan(parse_json("[NaN]", allow_nan=True)[0])


def test_read_json_refuses_a_file_over_the_size_cap(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + " " * MAX_JSON_BYTES + "]")
    with pytest.raises(json.JSONDecodeError, match="over the"):
        read_json(path)


def test_deep_project_json_files_are_one_line_errors_not_recursion(tmp_path):
    bomb = deep(200_000)
    (tmp_path / "labels.json").write_text(bomb)
    with pytest.raises(UserError, match="labels.json: .*nested deeper"):
        Contract.read(tmp_path / "labels.json")
    (tmp_path / "card.json").write_text(bomb)
    card, why = read_card(tmp_path / "card.json", tmp_path / "labels.json")
    assert card is None and "card.json" in why
    (tmp_path / "export" / "onnx").mkdir(parents=True)
    (tmp_path / "export" / "export.json").write_text(bomb)
    assert card_of(tmp_path / "export" / "onnx" / "model.onnx")[1] is None
    (tmp_path / "labels.json").write_text('{"classes": ["a", "b"], "image_size": NaN}')
    with pytest.raises(UserError, match="labels.json: .*NaN"):
        Contract.read(tmp_path / "labels.json")


# ------------------------------------------------------------------------- .keras archives


def keras_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_keras_file_is_checked_before_keras_reads_it(tmp_path):
    from lungct.model.saving import archive_problem, load_model

    meta = b'{"keras_version": "3"}'
    bomb = keras_zip(
        tmp_path / "bomb.keras",
        {"metadata.json": meta, "config.json": b"{" + b" " * (MAX_JSON_BYTES + 1) + b"}"},
    )
    assert bomb.stat().st_size < 100_000
    assert "config.json of 16 MiB" in archive_problem(bomb)
    deep_config = keras_zip(
        tmp_path / "deep.keras", {"metadata.json": meta, "config.json": deep(50_000).encode()}
    )
    assert "config.json: nested deeper" in archive_problem(deep_config)
    expands = keras_zip(
        tmp_path / "weights.keras",
        {"metadata.json": meta, "config.json": b"{}", "model.weights.h5": bytes(40 * 2**20)},
    )
    assert "a decompression bomb" in archive_problem(expands)
    assert "no config.json" in archive_problem(keras_zip(tmp_path / "m.keras", {"x": b""}))
    for path in (bomb, deep_config, expands):
        with pytest.raises(UserError, match=f"{path.name}: not a Keras model file"):
            load_model(path)


# ------------------------------------------------------------------------- for the sweep
# Damages of a trained project's files, for tests/test_bad_inputs.py.


def nan_weights(root: Path) -> None:
    """Every weight of ``models/model.keras`` set to NaN (the file stays a valid model)."""
    import h5py

    model = root / "models" / "model.keras"
    with zipfile.ZipFile(model) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    weights = root / "weights.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:

        def poison(_: str, node: object) -> None:
            if isinstance(node, h5py.Dataset) and node.dtype.kind == "f":
                node[...] = np.nan

        h5.visititems(poison)
    members["model.weights.h5"] = weights.read_bytes()
    weights.unlink()
    keras_zip(model, members)


def config_bomb(root: Path) -> None:
    """``models/model.keras`` with a config.json of 64 MiB of spaces (a 64 KiB member)."""
    meta = b'{"keras_version": "3"}'
    keras_zip(
        root / "models" / "model.keras", {"metadata.json": meta, "config.json": bytes(64 * 2**20)}
    )


def nan_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), np.nan, np.float32)).save(buffer, "TIFF")
    return buffer.getvalue()
