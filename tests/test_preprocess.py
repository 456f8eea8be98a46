"""lungct.preprocess: the one raw file -> model input path, shared by convert and predict."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.contract import Contract, Preprocessing
from lungct.errors import SkippedFile
from lungct.preprocess import (
    dicom_images,
    exported_image,
    file_problem,
    model_images,
    model_input,
)
from stages.convert import convert
from stages.download import download
from tests.dicom_fixtures import (
    ct_basic,
    ct_modality_lut_sequence,
    enhanced_ct,
    no_preamble,
    not_dicom,
    sr_document,
    truncated_pixel_data,
    zero_byte,
)

THREE_WINDOWS = [
    {"center": -600, "width": 1500},
    {"center": 50, "width": 350},
    {"center": 400, "width": 1800},
]


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("windows", [THREE_WINDOWS[:1], THREE_WINDOWS], ids=["gray", "3-window"])
def test_model_images_of_raw_dicom_are_the_converted_pngs(workdir, tiny, windows):
    """Predicting on a raw file feeds the model the very pixels train and evaluate read."""
    download(tiny)
    params = tiny.convert.model_copy(
        update={"windows": [type(tiny.convert.windows[0])(**w) for w in windows]}
    )
    convert(params)
    prep = Preprocessing.from_params(params)
    assert prep.channels == len(windows)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    for row in manifest.itertuples():
        (image,) = model_images(workdir / "data/raw" / row.source, prep)
        stored = png_pixels(workdir / "data/converted" / row.output)
        assert image.pixels.dtype == np.uint8 and np.array_equal(image.pixels, stored)
        assert (image.rows, image.columns, image.mode) == (row.rows, row.columns, "HU")


def test_file_window_replaces_the_first_channel(tmp_path):
    expect = ct_modality_lut_sequence(tmp_path)  # the fixture with its own Window 1000/2000
    plain = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    own = Preprocessing(((-600.0, 1500.0),), file_window=True, image_size=32)
    assert dicom_images(expect.path, plain)[0].windows == ((-600.0, 1500.0),)
    assert dicom_images(expect.path, own)[0].windows == ((1000.0, 2000.0),)


def test_exported_image_is_gray_repeated_per_window_and_resized(tmp_path):
    path = tmp_path / "slice.png"
    Image.new("RGB", (40, 20), (200, 100, 50)).save(path)
    prep = Preprocessing(((-600.0, 1500.0),) * 3, file_window=False, image_size=16)
    image = exported_image(path, prep)
    assert image.pixels.shape == (16, 16, 3) and image.mode == "RGB"
    assert (image.rows, image.columns) == (20, 40)
    # Aspect kept: 40 x 20 -> 16 x 8, centred, black above and below.
    assert image.pixels[0].max() == 0 and image.pixels[8, :, 0].min() > 0
    assert np.array_equal(image.pixels[..., 0], image.pixels[..., 2])


def test_model_images_tells_dicom_from_images_by_content(tmp_path):
    prep = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    ct = ct_basic(tmp_path / "ct")
    no_extension = tmp_path / "IM0001"
    no_extension.write_bytes(ct.path.read_bytes())
    (dicom,) = model_images(no_extension, prep)
    assert dicom.mode == "HU" and dicom.pixels.shape == (32, 32)
    png = not_dicom(tmp_path / "nd").paths[1]  # a PNG named .dcm
    (image,) = model_images(png, prep)
    assert image.mode == "L"
    frames = model_images(enhanced_ct(tmp_path / "enh").path, prep)
    assert [f.frame.frame for f in frames] == [0, 1, 2]


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        (sr_document, "not_ct"),
        (truncated_pixel_data, "truncated_pixel_data"),
        (zero_byte, "empty_file"),
        (no_preamble, "no_preamble"),
    ],
)
def test_unusable_dicom_keeps_its_reason(tmp_path, builder, reason):
    prep = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    with pytest.raises(SkippedFile) as skip:
        model_images(builder(tmp_path).path, prep)
    assert skip.value.reason == reason


def test_neither_dicom_nor_image_is_not_image(tmp_path):
    prep = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(SkippedFile, match="neither a DICOM file nor an image") as skip:
        model_images(text, prep)
    assert skip.value.reason == "not_image"
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    broken.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(SkippedFile) as skip:
        model_images(broken, prep)
    assert skip.value.reason == "unreadable_image"


def test_model_input_is_float32_nhwc():
    gray = [np.full((4, 4), 7, np.uint8), np.zeros((4, 4), np.uint8)]
    x = model_input(gray)
    assert x.shape == (2, 4, 4, 1) and x.dtype == np.float32 and x[0, 0, 0, 0] == 7.0
    assert model_input([np.zeros((4, 4, 3), np.uint8)]).shape == (1, 4, 4, 3)


def test_file_problem_is_the_one_rule_for_an_exception_on_a_file():
    assert file_problem(SkippedFile("bad_rescale", "RescaleSlope nan")) == (
        "bad_rescale",
        "RescaleSlope nan",
    )
    assert file_problem(ZeroDivisionError("division by zero\nmore")) == (
        "unreadable",
        "ZeroDivisionError: division by zero",
    )
    with pytest.raises(MemoryError):  # the machine's state, not the file's
        file_problem(MemoryError())


def test_the_image_limit_is_not_part_of_the_contract():
    """max_image_bytes guards the machine: the contract a model was trained with, and its
    labels.json, are the same whatever the limit."""
    small = Preprocessing(((-600.0, 1500.0),), False, 32, max_image_bytes=1000)
    default = Preprocessing(((-600.0, 1500.0),), False, 32)
    assert small == default
    assert Contract(("a", "b"), small).to_dict() == Contract(("a", "b"), default).to_dict()
    assert "max_image_bytes" not in Contract(("a", "b"), small).to_dict()


def test_model_images_uses_the_limit_of_its_preprocessing(tmp_path):
    path = tmp_path / "slice.png"
    Image.new("L", (40, 20), 9).save(path)
    with pytest.raises(SkippedFile) as skip:
        model_images(path, Preprocessing(((-600.0, 1500.0),), False, 32, max_image_bytes=799))
    assert skip.value.reason == "too_large"
    ct = ct_basic(tmp_path)  # 640 bytes of pixel data
    with pytest.raises(SkippedFile) as skip:
        model_images(ct.path, Preprocessing(((-600.0, 1500.0),), False, 32, max_image_bytes=639))
    assert skip.value.reason == "too_large"
