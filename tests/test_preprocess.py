"""lungct.io.preprocess: the one raw file -> model input path, shared by convert and predict."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.contract import Contract, Preprocessing
from lungct.errors import SkippedFile
from lungct.io.dicom import CTFrame, StoredPixels, read_ct
from lungct.io.images import model_input
from lungct.io.preprocess import (
    dicom_images,
    exported_image,
    file_problem,
    frame_channels,
    model_images,
)
from lungct.io.windowing import window_channels
from stages.convert import convert
from stages.download import download
from tests.dicom_fixtures import (
    BUILDERS,
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


@pytest.mark.parametrize(
    ("windows", "framing"),
    [
        (THREE_WINDOWS[:1], "image"),
        (THREE_WINDOWS, "image"),
        (THREE_WINDOWS[:1], "body"),
        (THREE_WINDOWS, "lungs"),
    ],
    ids=["gray", "3-window", "gray-body", "3-window-lungs"],
)
def test_model_images_of_raw_dicom_are_the_converted_pngs(workdir, tiny, windows, framing):
    """Predicting on a raw file feeds the model the very pixels train and evaluate read."""
    download(tiny)
    params = tiny.convert.model_copy(
        update={
            "windows": [type(tiny.convert.windows[0])(**w) for w in windows],
            "framing": framing,
        }
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


# ------------------------------------------------------------ windows as lookup tables (issue 17)
# frame_channels looks a frame's stored values up in a table per window, built by the float
# path (StoredPixels.hu, then window_uint8) on every possible stored value; the pixels must
# be the float path's exactly, whatever the file.
WINDOW_SETS = [
    [(-600.0, 1500.0)],
    [(w["center"], w["width"]) for w in THREE_WINDOWS],
    [(40.0, 1.0)],  # a step: every value is 0 or 255
    [(-1000.5, 0.37), (7.25, 3333.3)],
]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lookup_gives_the_float_paths_pixels_for_every_reader_rule(tmp_path, name):
    expect = BUILDERS[name](tmp_path)
    if expect.reason:
        return
    for path in expect.paths or [expect.path]:
        for frame in read_ct(path):
            for windows in WINDOW_SETS:
                fast = frame_channels(frame, windows)
                assert np.array_equal(fast, window_channels(frame.hu, windows)), (path, windows)
            if frame.stored is not None:  # a linear rescale: HU only on demand
                np.testing.assert_array_equal(frame.hu, frame.stored.hu())


def ct_frame(stored: StoredPixels) -> CTFrame:
    return CTFrame(
        hu=None,
        patient_id="P",
        series_uid="S",
        instance_number=1,
        frame=0,
        slice_position=None,
        rescale_type="HU",
        transfer_syntax="",
        gantry_tilt=None,
        window=None,
        stored=stored,
    )


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int8", "uint8"])
@pytest.mark.parametrize(
    ("slope", "intercept", "padding"),
    [
        (1.0, -1024.0, (None, None)),
        (1.0, -1024.0, (-2000, None)),
        (0.37, -1024.3, (63536, None)),  # -2000 encoded as unsigned
        (2.5, 7.0, (-100, 100)),  # a padding range
        (-1.0, 0.0, (120, 3)),  # the limit below the value
    ],
)
def test_lookup_covers_every_stored_value(dtype, slope, intercept, padding):
    dtype = np.dtype(dtype)
    every = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}").view(dtype)
    values = np.random.default_rng(0).permutation(every).reshape(-1, 256)
    bits = 8 * dtype.itemsize
    stored = StoredPixels(values, slope, intercept, padding, bits, dtype.kind == "i")
    frame = ct_frame(stored)
    assert stored.codes() is not None and frame.__dict__["hu"] is None
    for windows in WINDOW_SETS:
        fast = frame_channels(frame, windows)
        assert frame.__dict__["hu"] is None  # the lookup never needed the HU
        assert np.array_equal(fast, window_channels(stored.hu(), windows)), windows
    assert frame.shape == values.shape and frame.__dict__["hu"] is None


def test_values_no_table_fits_take_the_float_path():
    values = np.arange(-70000, 70000, 7, dtype=np.int32).reshape(-1, 100)
    stored = StoredPixels(values, 1.0, -1024.0, (None, None), 32, True)
    assert stored.codes() is None
    frame = ct_frame(stored)
    windows = WINDOW_SETS[1]
    assert np.array_equal(frame_channels(frame, windows), window_channels(stored.hu(), windows))
    swapped = StoredPixels(values.astype(">i2"), 1.0, 0.0)  # not this machine's byte order
    assert swapped.codes() is None


def test_reader_computes_hu_only_when_asked(tmp_path):
    expect = ct_basic(tmp_path)
    [frame] = read_ct(expect.path)
    assert frame.__dict__["hu"] is None and frame.stored is not None
    assert frame.shape == expect.hu.shape and frame.__dict__["hu"] is None
    np.testing.assert_array_equal(frame.hu, expect.hu)
    assert frame.hu is frame.hu  # computed once


def test_body_framing_reaches_every_model_image(tmp_path):
    """framing: body crops before the resize on the one path convert, predict and the app
    share; the original size is still what the manifest records."""
    from tests.test_images import chest_export

    path = tmp_path / "export.png"
    Image.fromarray(chest_export(400, 600, 150, 220)).save(path)
    whole = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    body = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32, framing="body")
    plain, framed = exported_image(path, whole), exported_image(path, body)
    assert (framed.rows, framed.columns) == (plain.rows, plain.columns) == (400, 600)
    # The body fills the framed image; unframed it is a small part of a wide margin.
    assert (framed.pixels > 0).mean() > 2 * (plain.pixels > 0).mean()
    (image,) = model_images(path, body)
    assert np.array_equal(image.pixels, framed.pixels)


def test_lung_framing_of_ct_is_by_density(workdir, tiny):
    """A CT frame's lungs are what inside the body is not denser than -500 HU: the lungs'
    box lies inside the body's, and the lung-framed input shows more lung than the
    body-framed one."""
    from lungct.io.images import BODY_HU, body_box, lung_box

    download(tiny)
    path = sorted((workdir / "data/raw").rglob("*.dcm"))[0]
    frame = read_ct(path)[0]
    body_mask = frame.hu > BODY_HU
    body, lungs = body_box(body_mask), lung_box(body_mask)
    assert body[0] < lungs[0] and lungs[1] < body[1] and body[2] < lungs[2] and lungs[3] < body[3]
    window = ((-600.0, 1500.0),)
    views = {
        framing: dicom_images(
            path, Preprocessing(window, file_window=False, image_size=32, framing=framing)
        )
        for framing in ("body", "lungs")
    }
    lung_level = window_channels(np.full((1, 1), -850.0, np.float32), window)[0, 0]

    def lung_share(image):
        return (np.abs(image.pixels.astype(int) - int(lung_level)) < 20).mean()

    assert lung_share(views["lungs"][0]) > 1.2 * lung_share(views["body"][0])


def test_body_framing_of_ct_is_by_density_whatever_the_window(workdir, tiny):
    """A CT frame's body is where it is denser than -500 HU: in a lung window air is grey
    (60 of 255), so brightness alone would find no margin to crop."""
    from lungct.io.images import BODY_HU, body_box

    download(tiny)
    path = sorted((workdir / "data/raw").rglob("*.dcm"))[0]
    frame = read_ct(path)[0]
    whole = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32)
    body = Preprocessing(((-600.0, 1500.0),), file_window=False, image_size=32, framing="body")
    top, bottom, left, right = body_box(frame.hu > BODY_HU)
    assert (bottom - top) * (right - left) < 0.9 * frame.hu.size  # the air around is cropped
    (plain,), (framed,) = dicom_images(path, whole), dicom_images(path, body)
    assert not np.array_equal(plain.pixels, framed.pixels)
    air = window_channels(np.full((1, 1), -1000.0, np.float32), whole.windows)[0, 0]
    assert (plain.pixels == air).mean() > (framed.pixels == air).mean()
